"""The example third-party plugin package: pip-installed into the test environment, then found by
``tlsearch plugins list``, used in a study, and tested with its own tests (which use tlsearch.testing)."""

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


def test_installed_example_is_listed_with_its_provider(site: Path) -> None:
    proc = _run(site, "-m", "tlsearch", "plugins", "list", "--kind", "freezing", "--json")
    assert proc.returncode == 0, proc.stderr
    entry = next(p for p in json.loads(proc.stdout) if p["name"] == "train_norms")
    assert entry["provider"] == "tlsearch-example-plugin" and entry["version"] == "0.1.0"
    assert "norm_lr_scale" in entry["hyperparameters"]


def test_installed_example_is_used_in_a_study(site: Path, tmp_path: Path, shapes_dir: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "example",
                "data": {
                    "train": str(shapes_dir / "train"),
                    "val": str(shapes_dir / "val"),
                    "image_size": 32,
                },
                "space": {
                    "backbone": {"timm": {"model": "test_resnet", "weights": "random"}},
                    "freezing": ["train_norms"],
                },
                "training": {"epochs": 1, "batch_size": 16},
                "search": {"n_trials": 1},
                "export": {"enabled": False},
            }
        )
    )
    proc = _run(site, "-m", "tlsearch", "run", str(study), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "train_norms" in proc.stdout and "trial 0 complete" in proc.stdout


def test_example_own_tests_pass_with_tlsearch_testing(site: Path) -> None:
    proc = _run(site, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests"), cwd=EXAMPLE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
