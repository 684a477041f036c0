"""Resume: a killed or interrupted worker loses nothing; rerunning continues the study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from tlsearch.search import run_study
from tlsearch.search.budget import FINISHED
from tlsearch.search.storage import make_storage

COMPLETE, FAIL, RUNNING = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.RUNNING,
)

# Makes each trial last long enough to be killed in the middle of it.
SLOW_PLUGIN = textwrap.dedent('''
    import time
    from tlsearch import hookimpl
    from tlsearch.kinds import Regularizer

    class Slow(Regularizer):
        """Sleeps before training."""
        name = "slow"

        def setup(self, model, *, num_outputs, task):
            time.sleep(4)

    @hookimpl
    def tlsearch_register_regularizers(register):
        register.add(Slow)
''')


@pytest.fixture
def slow_study(write_study, tmp_path):
    plugin = tmp_path / "slow_plugin.py"
    plugin.write_text(SLOW_PLUGIN)
    return write_study(
        plugins=[str(plugin)],
        training={"epochs": 1},
        search={"n_trials": 3, "pruner": "none"},
        space={"freezing": ["linear_probe"], "regularizers": {"slow": {"enabled": True}}},
    )


def _start_worker(study: Path, out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tlsearch", "worker", str(study), "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_trial_start(out: Path, number: int, proc: subprocess.Popen[str], timeout: float = 180) -> None:
    trail = out / "trail.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if trail.is_file():
            for line in trail.read_text().splitlines():
                event = json.loads(line)
                if event["event"] == "trial_start" and event["trial"] == number:
                    time.sleep(1.0)  # inside the plugin's setup: mid-trial
                    return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError(f"trial {number} did not start within {timeout}s")


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=make_storage(str(out / "study.journal")))


def _by_number(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    return {t.number: t for t in study.get_trials(deepcopy=False)}


def test_sigkilled_worker_trial_is_failed_and_retried_with_the_same_params(slow_study, tmp_path):
    out = tmp_path / "out"
    proc = _start_worker(slow_study, out)
    _wait_for_trial_start(out, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _by_number(_study(out))
    assert before[0].state == COMPLETE and before[1].state == RUNNING  # the zombie the kill left

    result = run_study(slow_study, out_dir=out, progress=False)
    after = _by_number(result.study)
    assert after[0].state == COMPLETE and after[0].value == before[0].value  # nothing complete lost or redone
    killed = after[1]
    assert killed.state == FAIL and "worker died" in killed.user_attrs["failure"]
    retries = [t for t in after.values() if t.user_attrs.get("retry_of") == 1]
    assert len(retries) == 1 and retries[0].params == killed.params and retries[0].state == COMPLETE
    assert sum(t.state in FINISHED for t in after.values()) == 3
    assert not [t for t in after.values() if t.state == RUNNING]


def test_interrupted_worker_records_the_trial_and_the_study_resumes(slow_study, tmp_path):
    out = tmp_path / "out"
    proc = _start_worker(slow_study, out)
    _wait_for_trial_start(out, 0, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    trial = _by_number(_study(out))[0]
    assert trial.state == FAIL and trial.user_attrs["failure_kind"] == "interrupted"

    result = run_study(slow_study, out_dir=out, progress=False, n_trials=1)
    retry = next(t for t in result.study.trials if t.user_attrs.get("retry_of") == 0)
    assert retry.state == COMPLETE and retry.params == trial.params
    assert sum(t.state in FINISHED for t in result.study.trials) == 1
