"""A bad study fails before any work starts, with one message naming file, field, value and choices."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import assert_refused_before_work
from tlsearch.cli import main
from tlsearch.config import load_config
from tlsearch.errors import ConfigError
from tlsearch.search import prepare

CASES = [
    ({"trainig": {"epochs": 2}}, ["unknown key 'trainig'", "valid keys here:", "training"]),
    ({"training": {"epochs": 0}}, ["training.epochs", "greater than or equal to 1", "got 0"]),
    ({"training": {"precision": "fp8"}}, ["training.precision", "'fp8'", "'bf16'"]),
    ({"training": {"device": "tpu"}}, ["training.device", "'tpu'", "valid choices: auto, cpu, cuda"]),
    ({"training": {"data_placement": "gpu"}}, ["training.data_placement", "'gpu'", "'resident'", "'stream'"]),
    ({"training": {"compile": "yes"}}, ["training.compile", "'yes'", "'always'", "'never'"]),
    ({"training": {"lr": {"low": 1e-2, "high": 1e-4}}}, ["training.lr", "low must be <= high"]),
    ({"search": {"sampler": "cmaes"}}, ["search.sampler", "'cmaes'", "'tpe'"]),
    ({"search": {"metric": "f1"}}, ["search.metric", "'f1'", "valid choices: accuracy"]),
    ({"data": {"val_fraction": 1.5}}, ["data.val_fraction", "1.5"]),
    ({"data": {"train": "/does/not/exist"}}, ["data.train", "/does/not/exist", "does not exist"]),
    (
        {"space": {"backbone": {"resnet19": {}}}},
        ["space.backbone", "unknown backbone 'resnet19'", "available:", "timm"],
    ),
    (
        {"space": {"freezing": {"linear_probe": {"n_frozen": 2}}}},
        ["space.freezing.linear_probe", "unknown hyperparameter 'n_frozen'"],
    ),
    (
        {"space": {"regularizers": {"label_smoothing": {"epsilon": "lots"}}}},
        ["space.regularizers.label_smoothing.epsilon", "expected a number", "'lots'"],
    ),
    (
        {"space": {"regularizers": {"weight_decay": {"strength": {"low": 0, "high": 1, "log": True}}}}},
        ["weight_decay.strength", "log range needs low > 0"],
    ),
    ({"space": {"backbone": {"torchvision": {}}}}, ["space.backbone.torchvision.model", "required"]),
    ({"space": {"head": {"linear": {"enabled": False}}}}, ["space.head.linear.enabled", "only regularizers"]),
    pytest.param(
        {"training": {"precision": "fp16"}},
        ["training.precision fp16 needs a GPU", "fp32 or bf16"],
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid where there is a GPU"),
    ),
    pytest.param(
        {"training": {"device": "cuda"}},
        ["training.device is 'cuda'", "CUDA is not available", "use auto or cpu"],
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU here"),
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"), CASES, ids=[str((c.values if hasattr(c, "values") else c)[0])[:50] for c in CASES]
)
def test_mistake_is_reported_before_any_work(write_study, tmp_path: Path, change, expected) -> None:
    assert_refused_before_work(write_study(**change), tmp_path / "out", expected)


def test_cli_exits_2_and_writes_nothing(write_study, tmp_path: Path) -> None:
    study = write_study(space={"backbone": {"resnet19": {}}})
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 2
    assert "unknown backbone 'resnet19'" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read the study file"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_relative_paths_resolve_from_the_study_file(tmp_path: Path, shapes_dir: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "data").symlink_to(shapes_dir)
    (folder / "s.yaml").write_text(
        "name: rel\ndata: {train: data/train, val: data/val}\nspace: {backbone: {timm: {model: test_resnet}}}\n"
    )
    config = load_config(folder / "s.yaml")
    assert config.resolve_path(config.data.train) == folder / "data" / "train"
    assert config.training.epochs == 3 and config.search.sampler == "tpe"


def test_timm_wildcard_becomes_a_choice_among_matching_models(write_study, tmp_path: Path) -> None:
    study = write_study(space={"backbone": {"timm": {"model": "test_e*", "weights": "random"}}})
    _, _, space, _ = prepare(study, out_dir=tmp_path / "out")
    choices = space.backbone[0].space.params["model"].choices
    assert "test_efficientnet" in choices and all(c.startswith("test_e") for c in choices)


def test_wildcard_matching_nothing_is_a_config_error(write_study, tmp_path: Path) -> None:
    study = write_study(space={"backbone": {"timm": {"model": "no_such_model_*", "weights": "random"}}})
    with pytest.raises(ConfigError, match=r"space.backbone.timm.*no_such_model_\*"):
        prepare(study, out_dir=tmp_path / "out")


def test_searching_n_frozen_fixes_the_fraction_it_replaces(write_study, tmp_path: Path) -> None:
    study = write_study(space={"freezing": {"freeze_stages": {"n_frozen": [1, 2]}}})
    _, _, space, _ = prepare(study, out_dir=tmp_path / "out")
    trial = optuna.create_study().ask()
    sampled = space.freezing[0].space.sample(trial, "freezing.freeze_stages")
    assert set(trial.params) == {"freezing.freeze_stages.n_frozen"}  # no ignored fraction is searched
    assert sampled["n_frozen"] in (1, 2) and sampled["fraction"] == 0.5


def test_fraction_is_searched_when_n_frozen_is_not_set(write_study, tmp_path: Path) -> None:
    study = write_study(space={"freezing": {"freeze_stages": {}}})
    _, _, space, _ = prepare(study, out_dir=tmp_path / "out")
    trial = optuna.create_study().ask()
    space.freezing[0].space.sample(trial, "freezing.freeze_stages")
    assert set(trial.params) == {"freezing.freeze_stages.fraction"}
