"""Resume: a killed or interrupted worker loses nothing; rerunning continues the study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from tests.conftest import wait_for_marker
from tlsearch.search import run_study
from tlsearch.search.budget import FINISHED
from tlsearch.search.storage import make_storage

COMPLETE, FAIL, RUNNING = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.RUNNING,
)

# Holds one trial of a worker inside the plugin until the test kills or interrupts the worker: no
# guess at how long a trial, start-up or signal delivery takes under load.
SLOW_PLUGIN = textwrap.dedent('''
    import os
    import time
    from pathlib import Path
    from tlsearch import hookimpl
    from tlsearch.kinds import Regularizer

    CALLS = {"n": 0}

    class Slow(Regularizer):
        """Writes markers/<pid>-<n> when the process's n-th trial is inside it; the n-th trial of a
        process started with TLSEARCH_TEST_HOLD_AT=n then waits there until the process is ended."""
        name = "slow"

        def setup(self, model, *, num_outputs, task):
            CALLS["n"] += 1
            markers = Path(__file__).with_name("markers")
            markers.mkdir(exist_ok=True)
            (markers / f"{os.getpid()}-{CALLS['n']}").touch()
            if os.environ.get("TLSEARCH_TEST_HOLD_AT") == str(CALLS["n"]):
                deadline = time.monotonic() + 600  # a safety net: the test ends the process long before
                while time.monotonic() < deadline:
                    time.sleep(0.05)

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


def _start_worker(study: Path, out: Path, *, hold: int) -> subprocess.Popen[str]:
    """A worker whose trial number ``hold`` (its ``hold + 1``-th) waits in the plugin until ended."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TLSEARCH_TEST_HOLD_AT": str(hold + 1)}

    def default_sigint() -> None:
        # An ignored SIGINT is inherited across exec (it is how `nohup … &` starts a worker), and
        # Python then leaves it ignored: the worker's Ctrl-C behaviour would depend on what earlier
        # code did to this test process. The child starts from the default, whatever the parent has.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen(
        [sys.executable, "-m", "tlsearch", "worker", str(study), "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )


def _wait_for_trial_start(out: Path, number: int, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    """Return once the worker's trial ``number`` (its ``number + 1``-th) is inside the plugin's
    setup: the plugin's marker says so, no guess at how long start-up takes under load."""
    marker = out.parent / "markers" / f"{proc.pid}-{number + 1}"
    wait_for_marker(marker.exists, proc, timeout=timeout, what=f"trial {number} started")


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=make_storage(str(out / "study.journal")))


def _by_number(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    return {t.number: t for t in study.get_trials(deepcopy=False)}


def test_sigkilled_worker_trial_is_failed_and_retried_with_the_same_params(slow_study, tmp_path):
    out = tmp_path / "out"
    proc = _start_worker(slow_study, out, hold=1)
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


def _ignores(pid: int, signum: int) -> bool:
    """Whether process ``pid`` ignores ``signum`` (Linux's /proc; False where it cannot tell)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return False
    line = next((row for row in status.read_text().splitlines() if row.startswith("SigIgn:")), "SigIgn: 0")
    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)


def test_interrupted_worker_records_the_trial_and_the_study_resumes(slow_study, tmp_path):
    out = tmp_path / "out"
    proc = _start_worker(slow_study, out, hold=0)
    _wait_for_trial_start(out, 0, proc)
    assert not _ignores(proc.pid, signal.SIGINT), "the worker ignores SIGINT: it would hold its trial forever"
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # say where it hung instead of only that it did
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the worker did not stop within 120 s of SIGINT; its stderr ends:\n{err[-3000:]}")
    assert proc.returncode == 130, err[-3000:]
    trial = _by_number(_study(out))[0]
    assert trial.state == FAIL and trial.user_attrs["failure_kind"] == "interrupted"

    result = run_study(slow_study, out_dir=out, progress=False, n_trials=1)
    retry = next(t for t in result.study.trials if t.user_attrs.get("retry_of") == 0)
    assert retry.state == COMPLETE and retry.params == trial.params
    assert sum(t.state in FINISHED for t in result.study.trials) == 1


# A head whose build ends the process (os.abort) the first time, in any process.
ABORT_PLUGIN = textwrap.dedent('''
    import os
    from pathlib import Path
    from torch import nn
    from tlsearch import hookimpl
    from tlsearch.kinds import Head

    class Abort(Head):
        """Aborts the process in its first build; builds a linear layer afterwards."""
        name = "abort"

        def build(self, in_features, out_features):
            done = Path(__file__).with_name("aborted")
            if not done.exists():
                done.touch()
                os.abort()
            return nn.Linear(in_features, out_features)

    @hookimpl
    def tlsearch_register_heads(register):
        register.add(Abort)
''')


def test_a_plugin_that_kills_the_process_leaves_its_trial_failed_with_a_reason(write_study, tmp_path):
    plugin = tmp_path / "abort_plugin.py"
    plugin.write_text(ABORT_PLUGIN)
    study = write_study(
        plugins=[str(plugin)],
        training={"epochs": 1},
        search={"n_trials": 1, "pruner": "none"},
        space={"head": ["abort"], "freezing": ["linear_probe"], "regularizers": {}},
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "tlsearch", "run", str(study), "--out", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGABRT, proc.stderr[-3000:]
    assert _by_number(_study(out))[0].state == RUNNING

    result = run_study(study, out_dir=out, progress=False)
    dead = _by_number(result.study)[0]
    assert dead.state == FAIL
    reason = dead.user_attrs["failure"]
    assert "worker died" in reason and "pid " in reason
    assert "last seen" in reason and "os.abort" in reason
    assert [t.state for t in result.study.trials[1:]] == [COMPLETE]


# A head plugin given only with --plugin (the study file does not name it).
EXTRA_HEAD = textwrap.dedent('''
    from torch import nn
    from tlsearch import hookimpl
    from tlsearch.kinds import Head

    class Extra(Head):
        """A linear head from a plugin file."""
        name = "extra"

        def build(self, in_features, out_features):
            return nn.Linear(in_features, out_features)

    @hookimpl
    def tlsearch_register_heads(register):
        register.add(Extra)
''')


def test_plugin_files_given_with_the_option_are_recorded_for_worker_and_export(write_study, tmp_path):
    from click.testing import CliRunner

    from tlsearch.cli import main

    plugin = tmp_path / "extra_head.py"
    plugin.write_text(EXTRA_HEAD)
    study = write_study(
        training={"epochs": 1},
        search={"n_trials": 1, "pruner": "none"},
        space={"head": ["extra"], "freezing": ["linear_probe"], "regularizers": {}},
    )
    out = tmp_path / "out"
    runner = CliRunner()
    cli = runner.invoke(
        main, ["run", str(study), "--out", str(out), "--plugin", str(plugin), "--console", "plain"]
    )
    assert cli.exit_code == 0, cli.output
    recorded = json.loads((out / "study.json").read_text())["config"]["plugins"]
    assert recorded == [str(plugin.resolve())]
    # Another process joins the study folder with no --plugin: the recorded file is loaded again.
    joined = subprocess.run(
        [sys.executable, "-m", "tlsearch", "worker", str(out), "--n-trials", "2"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert sum(t.state == COMPLETE for t in _study(out).trials) == 2
    plugin.unlink()  # and a recorded file that is gone is named
    gone = runner.invoke(main, ["export", str(out)])
    assert gone.exit_code == 2 and str(plugin.resolve()) in gone.output
