"""One line per failure on the console: no Optuna warning with a traceback, no experimental-feature
warning, warnings in one line; the traceback stays in the trial and the trail, and shows with
``--verbose``."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest

from tests.test_failures import boom_study  # noqa: F401 - fixture
from tlsearch.cli.noise import one_line_warnings, quiet_noise
from tlsearch.search.storage import make_storage

ROOT = Path(__file__).resolve().parents[1]


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    return subprocess.run(
        [sys.executable, "-m", "tlsearch", *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.slow  # a whole (tiny) study in a fresh process: real stderr, real logging
def test_a_failing_trial_is_one_line_and_its_traceback_goes_to_the_trail(boom_study, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    storage = f"sqlite:///{tmp_path / 'study.db'}"  # a database: heartbeats, Optuna's "experimental" feature
    run = _run_cli(
        "run", str(boom_study("raise")), "--out", str(out), "--storage", storage, "--console", "plain"
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert "ExperimentalWarning" not in run.stderr and "failed with parameters" not in run.stderr
    assert run.stderr.strip() == "", run.stderr
    failed = [line for line in run.stdout.splitlines() if line.startswith("trial 0 fail")]
    assert len(failed) == 1 and "the penalty exploded" in failed[0], run.stdout
    trail = [json.loads(line) for line in (out / "trail.jsonl").read_text().splitlines()]
    (end,) = [r for r in trail if r["event"] == "trial_end" and r["state"] == "FAIL"]
    assert "Traceback" in end["traceback"] and "the penalty exploded" in end["traceback"]


def _optuna_trial_warning() -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("optuna.study._optimize")
    logger.addHandler(handler)
    try:
        logger.warning("Trial 3 failed with parameters: {} because of the following error: boom.")
        logger.warning("Trial 3 finished with value: 0.5")
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_optuna_failure_warnings_are_dropped_unless_verbose():
    try:
        quiet_noise(verbose=False)
        assert _optuna_trial_warning() == "Trial 3 finished with value: 0.5\n"
        quiet_noise(verbose=True)
        assert "Trial 3 failed" in _optuna_trial_warning()
    finally:
        quiet_noise(verbose=True)


def test_warnings_print_as_one_line_once_each():
    stream = io.StringIO()
    show = one_line_warnings(stream)
    for _ in range(3):
        show(UserWarning("the input\n  is odd"), UserWarning, "x.py", 3)
    assert stream.getvalue() == "warning: the input is odd (UserWarning)\n"


def test_a_database_storage_says_nothing_of_experimental_heartbeats(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_storage(f"sqlite:///{tmp_path / 'x.db'}", heartbeat_interval=30, grace_period=60)
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_predict_draws_its_progress_bar_only_on_a_terminal_unless_asked():
    from tlsearch.cli.predict import show_progress

    assert show_progress(None, files=100, batch_size=16, stream=_Stream(tty=True))
    assert not show_progress(None, files=100, batch_size=16, stream=_Stream(tty=False))  # a log file
    assert not show_progress(None, files=10, batch_size=16, stream=_Stream(tty=True))  # one batch
    assert show_progress(True, files=100, batch_size=16, stream=_Stream(tty=False))
