"""The example third-party plugin package (one plugin of each kind): pip-installed into a folder of
its own, then found by ``tlsearch plugins list`` with its provider, used in a real search where all
four plugins are the example's (exported to ONNX), and tested with its own tests (which use
tlsearch.testing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).parents[1] / "examples" / "tlsearch-example-plugin"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example installed with pip (no dependencies: tlsearch is already here) into its own folder."""
    root = tmp_path_factory.mktemp("example")
    source = root / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns(".pytest_cache", "build", "*.egg-info"))
    target = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
    )
    return target


def _run(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


PLUGINS = {
    "backbone": ("small_cnn", "weights"),
    "head": ("prototype", "scale"),
    "freezing": ("train_norms", "norm_lr_scale"),
    "regularizer": ("confidence_penalty", "beta"),
}


def test_installed_example_is_listed_with_its_provider(site: Path) -> None:
    proc = _run(site, "-m", "tlsearch", "plugins", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = {(p["kind"], p["name"]): p for p in json.loads(proc.stdout)}
    for kind, (name, hyperparameter) in PLUGINS.items():
        entry = listed[(kind, name)]
        assert entry["provider"] == "tlsearch-example-plugin" and entry["version"] == "0.1.0", entry
        assert entry["status"] == "ok" and hyperparameter in entry["hyperparameters"]


def test_installed_example_runs_a_search_with_all_four(site: Path, tmp_path: Path, shapes_dir: Path) -> None:
    """A real search whose every plugin is the example's: the backbone loads a weights file given
    relative to the study file (the command runs from another folder), the prototype head starts
    from the class means, and the winner exports to ONNX."""
    import optuna
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(site))
    try:
        from tlsearch_example_plugin.backbone import SmallCNN
    finally:
        sys.path.remove(str(site))
    torch.manual_seed(0)
    (tmp_path / "weights").mkdir()
    save_file(SmallCNN(8).state_dict(), str(tmp_path / "weights" / "small_cnn.safetensors"))
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "example",
                "data": {"train": str(shapes_dir / "train"), "val": str(shapes_dir / "val")},
                "space": {
                    "backbone": {"small_cnn": {"width": 8, "weights": "weights/small_cnn.safetensors"}},
                    "head": {"prototype": {"scale": {"low": 5.0, "high": 20.0, "log": True}}},
                    "freezing": {"train_norms": {"top_groups": [0, 1]}},
                    "regularizers": {"confidence_penalty": {"enabled": True}},
                },
                "training": {"epochs": 1, "batch_size": 16},
                "search": {"n_trials": 2},
                "export": {"enabled": True, "soup": False},
            }
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    proc = _run(site, "-m", "tlsearch", "run", str(study), "--out", str(out), cwd=elsewhere)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from tlsearch.search.storage import make_storage

    trials = optuna.load_study(study_name="example", storage=make_storage(str(out / "study.journal"))).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        assert trial.user_attrs["backbone"]["weights"] == str(
            (tmp_path / "weights" / "small_cnn.safetensors").resolve()
        )
        assert trial.user_attrs["backbone"]["model"] == "small_cnn_w8"
        assert trial.user_attrs["speed"]["head_init_from_data"] is True
        assert {"freezing.train_norms.top_groups", "head.prototype.scale"} <= set(trial.params)
    exported = json.loads((out / "model.json").read_text())
    assert (out / "model.onnx").is_file()
    assert "small_cnn" in json.dumps(exported) and "prototype" in json.dumps(exported)


def test_example_own_tests_pass_with_tlsearch_testing(site: Path) -> None:
    proc = _run(site, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests"), cwd=EXAMPLE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
