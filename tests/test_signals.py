"""Signals stop every process cleanly: SIGTERM to ``tlsearch run`` (alone, or with ``--workers``)
fails the running trial, queues its parameters again and exits 143, leaving no trial RUNNING and
no worker process behind. Each test waits for a marker the plugin writes inside the trial, never
for a fixed time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from tests.conftest import wait_for_marker
from tlsearch.search.storage import make_storage

FAIL, RUNNING, WAITING = (
    optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.RUNNING,
    optuna.trial.TrialState.WAITING,
)
WAIT_SECONDS = 300  # bounds every wait: the machine may be busy, the test never sleeps for a fixed time

# Writes markers/<pid>-<n> when a trial's setup starts, then holds the trial for up to a minute.
HOLD_PLUGIN = textwrap.dedent('''
    import os
    import time
    from pathlib import Path
    from tlsearch import hookimpl
    from tlsearch.kinds import Regularizer

    MARKERS = Path(__file__).with_name("markers")
    CALLS = {"n": 0}

    class Hold(Regularizer):
        """Keeps the trial running (mid-trial) long enough to be signalled."""
        name = "hold"

        def setup(self, model, *, num_outputs, task):
            CALLS["n"] += 1
            MARKERS.mkdir(exist_ok=True)
            (MARKERS / f"{os.getpid()}-{CALLS['n']}").touch()
            time.sleep(60)

    @hookimpl
    def tlsearch_register_regularizers(register):
        register.add(Hold)
''')


@pytest.fixture
def hold_study(write_study, tmp_path: Path) -> Path:
    (tmp_path / "hold_plugin.py").write_text(HOLD_PLUGIN)
    return write_study(
        plugins=[str(tmp_path / "hold_plugin.py")],
        training={"epochs": 1},
        search={"n_trials": 4, "pruner": "none"},
        space={"freezing": ["linear_probe"], "regularizers": {"hold": {"enabled": True}}},
    )


def _start(args: list[str], *, ignore_sigint: bool = False) -> subprocess.Popen[str]:
    def no_sigint() -> None:  # as `nohup … &` starts a process: SIGINT ignored, inherited by children
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen(
        [sys.executable, "-m", "tlsearch", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=no_sigint if ignore_sigint else None,
    )


def _wait_for_markers(markers: Path, count: int, proc: subprocess.Popen[str]) -> list[int]:
    """The pids of the processes that have a trial inside the plugin, once ``count`` of them do."""

    def pids() -> list[int] | None:
        found = sorted({int(p.name.split("-")[0]) for p in markers.glob("*-*")}) if markers.is_dir() else []
        return found if len(found) >= count else None

    return wait_for_marker(pids, proc, timeout=WAIT_SECONDS, what=f"{count} trial(s) reached the plugin")


def _trials(out: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="tiny", storage=make_storage(str(out / "study.journal")))
    return study.get_trials(deepcopy=False)


def _check_requeued(trials: list[optuna.trial.FrozenTrial], interrupted: int) -> None:
    assert not [t for t in trials if t.state == RUNNING]
    failed = [t for t in trials if t.state == FAIL]
    assert len(failed) == interrupted, [t.user_attrs.get("failure") for t in failed]
    for t in failed:
        assert t.user_attrs["failure_kind"] == "interrupted" and "SIGTERM" in t.user_attrs["failure"]
        retry = [w for w in trials if w.state == WAITING and w.user_attrs.get("retry_of") == t.number]
        # a rerun retries the same parameters (an enqueued trial keeps them as "fixed_params")
        assert len(retry) == 1 and retry[0].system_attrs["fixed_params"] == t.params


def test_sigterm_stops_run_cleanly_and_requeues_the_running_trial(hold_study, tmp_path):
    out = tmp_path / "out"
    proc = _start(["run", str(hold_study), "--out", str(out), "--console", "plain"])
    _wait_for_markers(tmp_path / "markers", 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=WAIT_SECONDS)
    assert proc.returncode == 143, err[-3000:]
    assert "terminated (SIGTERM)" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (
        err
    )  # one line, not Optuna's warning
    _check_requeued(_trials(out), interrupted=1)


def test_sigterm_to_run_with_workers_stops_every_worker_even_with_sigint_ignored(hold_study, tmp_path):
    out = tmp_path / "out"
    proc = _start(
        ["run", str(hold_study), "--out", str(out), "--workers", "2", "--console", "plain"],
        ignore_sigint=True,
    )
    workers = _wait_for_markers(tmp_path / "markers", 2, proc)
    assert proc.pid not in workers
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=WAIT_SECONDS)
    assert proc.returncode == 143, err[-3000:]
    assert "terminated (SIGTERM)" in err
    for pid in workers:  # the parent waited for them: they are gone, not orphaned
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    _check_requeued(_trials(out), interrupted=2)
