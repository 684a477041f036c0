"""Fixtures shared by the core tests: a small labelled image set and study files written on the fly."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.s3_server import s3_bucket, s3_server  # noqa: F401 (fixtures: a local S3 stand-in)

os.environ.setdefault("OMP_NUM_THREADS", "2")

T = TypeVar("T")


def wait_for_marker(
    found: Callable[[], T | None], proc: subprocess.Popen[str], *, timeout: float, what: str
) -> T:
    """Poll ``found()`` (a plugin's marker files, say) until it returns something truthy, and return
    it: a test waits for an event, never guesses how long start-up takes under load. Fails with the
    process's stderr if it ends first, and kills it after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{what} did not happen within {timeout}s")


def assert_refused_before_work(study: Path, out: Path, expected: Iterable[str]) -> None:
    """``study`` is a config error naming its file and each ``expected`` fragment, raised by
    :func:`tlsearch.search.prepare` before anything is written to ``out``."""
    from tlsearch.errors import ConfigError
    from tlsearch.search import prepare

    with pytest.raises(ConfigError) as err:
        prepare(study, out_dir=out)
    message = str(err.value)
    assert str(study) in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert not out.exists()


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/`` and ``val/`` class folders of 32 px shape images (4 classes), made once per session."""
    from tlsearch.demo import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes"), per_class=12, val_per_class=4, size=32, seed=0)


def decode_shapes(shapes_dir: Path, cache: Path) -> tuple[Any, Any]:
    """The shape images' ``train`` and ``val`` splits decoded for the tiny backbone (``cache``: the
    decoded-image cache folder): the data of the tests that drive the real ``Trainer``."""
    from tlsearch.data import decode_images, scan_folder
    from tlsearch.testing._tiny import TinyBackbone

    train = scan_folder(shapes_dir / "train")
    val = scan_folder(shapes_dir / "val", classes=train.classes)
    config = TinyBackbone().build().data_config
    return (
        decode_images(train, config, cache_dir=cache, progress=False),
        decode_images(val, config, cache_dir=cache, progress=False),
    )


TINY_STUDY: dict[str, Any] = {
    "name": "tiny",
    "data": {"train": None, "val": None, "image_size": 32},
    "space": {
        "backbone": {"timm": {"model": "test_efficientnet", "weights": "random"}},
        "head": ["linear"],
        "freezing": ["linear_probe", "full_finetune"],
        "regularizers": {"label_smoothing": {}},
    },
    "training": {"epochs": 2, "batch_size": 16, "lr": {"low": 1e-3, "high": 1e-2, "log": True}},
    # sampled trials under the median pruner, as these tests were written for; the defaults (warm
    # start on, successive halving) are tested where a test leaves these out (test_portfolio_declared)
    "search": {"n_trials": 3, "seed": 0, "pruner": "median", "warm_start": False},
    "export": {"enabled": False},
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


@pytest.fixture
def write_study(tmp_path: Path, shapes_dir: Path):
    """``write_study(**sections)`` writes a tiny study YAML (merged over :data:`TINY_STUDY`) and returns its path."""

    def write(name: str = "study.yaml", **sections: Any) -> Path:
        base = _merge(
            TINY_STUDY, {"data": {"train": str(shapes_dir / "train"), "val": str(shapes_dir / "val")}}
        )
        path = tmp_path / name
        path.write_text(yaml.safe_dump(_merge(base, sections), sort_keys=False))
        return path

    return write
