"""A study can sample every built-in plugin: one real (tiny) trial with each, through the whole search path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tlsearch.registry import get_plugin_manager
from tlsearch.search import run_study

REGISTRY = get_plugin_manager().registry
TINY_BACKBONE = {"timm": {"model": "test_resnet", "weights": "random"}}
pytestmark = pytest.mark.slow


def _run_one(tmp_path: Path, shapes_dir: Path, *, space: dict, image_size: int = 32) -> dict:
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "one",
                "data": {
                    "train": str(shapes_dir / "train"),
                    "val": str(shapes_dir / "val"),
                    "image_size": image_size,
                },
                "space": {"backbone": TINY_BACKBONE, **space},
                "training": {"epochs": 2, "batch_size": 16, "lr": 1e-3},
                "search": {"n_trials": 1},
                "export": {"enabled": False},
            }
        )
    )
    trial = run_study(study, out_dir=tmp_path / "out", progress=False).study.trials[0]
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("failure")
    return trial.user_attrs


@pytest.mark.parametrize("name", REGISTRY.names("freezing"))
def test_each_freezing_strategy_runs_in_a_study(name: str, tmp_path: Path, shapes_dir: Path) -> None:
    attrs = _run_one(tmp_path, shapes_dir, space={"freezing": [name]})
    assert attrs["plugins"]["freezing"] == name


@pytest.mark.parametrize("name", REGISTRY.names("regularizer"))
def test_each_regularizer_runs_in_a_study(name: str, tmp_path: Path, shapes_dir: Path) -> None:
    attrs = _run_one(tmp_path, shapes_dir, space={"regularizers": {name: {"enabled": True}}})
    assert attrs["plugins"]["regularizers"] == [name]


@pytest.mark.parametrize("name", [n for n in REGISTRY.names("head") if n != "regression"])
def test_each_classification_head_runs_in_a_study(name: str, tmp_path: Path, shapes_dir: Path) -> None:
    attrs = _run_one(tmp_path, shapes_dir, space={"head": [name]})
    assert attrs["plugins"]["head"] == name


def test_all_regularizers_together(tmp_path: Path, shapes_dir: Path) -> None:
    """Several regularizers can be active in one trial."""
    names = [
        n for n in REGISTRY.names("regularizer") if n not in {"cutmix"}
    ]  # mixup and cutmix exclude each other
    attrs = _run_one(tmp_path, shapes_dir, space={"regularizers": {n: {"enabled": True} for n in names}})
    assert sorted(attrs["plugins"]["regularizers"]) == sorted(names)
