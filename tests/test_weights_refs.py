"""Weights are checked once, before any trial: a reference must name a path and is never called
otherwise (``os:abort``), a typo is a config error listing the valid forms, and a missing, unsafe
(pickle) or ill-fitting file stops ``tlsearch run`` with exit 2 before anything is written."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from tests.test_registry import site  # noqa: F401 - a fixture
from tlsearch.cli import main
from tlsearch.errors import ConfigError
from tlsearch.search import prepare, run_study

MODEL = "test_efficientnet"


def _study(write_study, weights: str, name: str = "study.yaml", **sections) -> Path:
    return write_study(name, space={"backbone": {"timm": {"model": MODEL, "weights": weights}}}, **sections)


def _run(study: Path, out: Path):
    return CliRunner().invoke(main, ["run", str(study), "--out", str(out)])


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ("os:abort", "not a path"),
        ("sys:exit", "not a path"),
        ("hubb", "valid forms: hub, random, a file path"),
        ("missing/weights.safetensors", "does not exist"),
        ("no_such_package_xyz:PATH", "cannot import 'no_such_package_xyz'"),
        ("os:no_such_attribute", "has no attribute"),
    ],
)
def test_bad_weights_are_a_config_error_before_any_trial(write_study, tmp_path, weights, expected) -> None:
    out = tmp_path / "out"
    result = _run(_study(write_study, weights), out)
    assert result.exit_code == 2, result.output
    assert weights in result.output and expected in result.output
    assert "space.backbone.timm" in result.output
    assert not out.exists()  # nothing written


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_once_up_front_and_never_runs(write_study, tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with evil.open("wb") as f:
        pickle.dump({"weight": _Evil(marker)}, f, protocol=2)
    out = tmp_path / "out"
    result = _run(_study(write_study, str(evil)), out)
    assert result.exit_code == 2, result.output
    assert "weights_only=True" in result.output and "evil.pth" in result.output
    assert not marker.exists() and not out.exists()


def _state(model_name: str = MODEL) -> dict[str, torch.Tensor]:
    return {
        k: v.contiguous() for k, v in timm.create_model(model_name, pretrained=False).state_dict().items()
    }


def test_weights_of_another_shape_are_refused_up_front(write_study, tmp_path) -> None:
    state = _state()
    first = next(k for k, v in state.items() if v.ndim == 4)
    state[first] = torch.zeros(*state[first].shape[:-1], state[first].shape[-1] + 2)
    save_file(state, str(tmp_path / "wrong.safetensors"))
    result = _run(_study(write_study, str(tmp_path / "wrong.safetensors")), tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "do not match the model" in result.output and first in result.output


def test_relative_weights_resolve_from_the_study_folder(write_study, tmp_path, monkeypatch) -> None:
    save_file(_state(), str(tmp_path / "mine.safetensors"))
    study = _study(write_study, "mine.safetensors", search={"n_trials": 1}, training={"epochs": 1})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _, _, space, _ = prepare(study)
    assert space.backbone[0].space.params["weights"].value == str((tmp_path / "mine.safetensors").resolve())
    result = run_study(study, out_dir=tmp_path / "out", progress=False)
    assert [t.state.name for t in result.study.trials] == ["COMPLETE"]


def test_reference_to_a_path_value_or_a_packages_function_works(site, write_study, tmp_path) -> None:  # noqa: F811
    save_file(_state(), str(tmp_path / "pkg.safetensors"))
    (site / "tls_test_wpkg.py").write_text(
        "from tempfile import gettempdir\n"
        f"PATH = {str(tmp_path / 'pkg.safetensors')!r}\n"
        "def path():\n    return PATH\n"
    )
    for ref in ("tls_test_wpkg:PATH", "tls_test_wpkg:path"):
        _, _, space, _ = prepare(_study(write_study, ref))
        assert space.backbone[0].space.params["weights"].value == ref
    with pytest.raises(ConfigError, match="defined in 'tempfile', not in 'tls_test_wpkg'"):
        prepare(_study(write_study, "tls_test_wpkg:gettempdir"))


def test_torchvision_and_curated_backbones_check_their_weights_up_front(write_study, tmp_path) -> None:
    save_file({"not_a_resnet.weight": torch.zeros(3)}, str(tmp_path / "odd.safetensors"))
    study = write_study(
        "tv.yaml", space={"backbone": {"torchvision": {"model": "resnet18", "weights": "odd.safetensors"}}}
    )
    with pytest.raises(ConfigError, match=r"space\.backbone\.torchvision: weights .*do not match the model"):
        prepare(study)
    study = write_study("curated.yaml", space={"backbone": {"resnet18": {"weights": "packaged"}}})
    with pytest.raises(ConfigError, match=r"space\.backbone\.resnet18: weights 'packaged' is only valid"):
        prepare(study)
