"""Observer hooks cannot throw trained work away: an implementation that raises is logged (once per
plugin and hook) and the trial keeps its result; FailTrial and TrialPruned end a trial on purpose."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import optuna
import pytest

from tlsearch.search import run_study
from tlsearch.worker_settings import WorkerSettings

COMPLETE, FAIL, PRUNED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.PRUNED,
)

OBSERVER = textwrap.dedent("""
    import optuna
    from tlsearch import hookimpl
    from tlsearch.errors import FailTrial

    MODE = "{mode}"

    @hookimpl
    def tlsearch_trial_start(trial):
        if MODE == "start_raises":
            raise RuntimeError("observer crashed at trial start")

    @hookimpl
    def tlsearch_epoch_end(trial, epoch):
        if MODE == "prune":
            raise optuna.TrialPruned("the observer prunes")
        if MODE == "epoch_fail":
            raise FailTrial("loss curve looks wrong")

    @hookimpl
    def tlsearch_trial_end(trial, state):
        if MODE == "raises":
            raise RuntimeError("dashboard unreachable")
        if MODE == "fail" and state == "COMPLETE":
            raise FailTrial("model too large for the target device")

    @hookimpl
    def tlsearch_study_end(study):
        if MODE == "raises":
            raise RuntimeError("study end crashed too")
""")


@pytest.fixture
def observed_study(write_study, tmp_path: Path):
    def make(mode: str, n_trials: int = 1) -> Path:
        plugin = tmp_path / f"observer_{mode}.py"
        plugin.write_text(OBSERVER.format(mode=mode))
        return write_study(
            f"{mode}.yaml",
            plugins=[str(plugin)],
            space={"freezing": ["linear_probe"], "regularizers": {}},
            training={"epochs": 1},
            search={"n_trials": n_trials, "pruner": "none"},
        )

    return make


def _trials(result):
    return sorted(result.study.get_trials(deepcopy=False), key=lambda t: t.number)


def test_raising_observer_keeps_the_trials_result_and_is_logged_once(observed_study, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="tlsearch")
    result = run_study(observed_study("raises", n_trials=2), out_dir=tmp_path / "out", progress=False)
    trials = _trials(result)
    assert [t.state for t in trials] == [COMPLETE, COMPLETE]
    assert all(t.value is not None and "failure" not in t.user_attrs for t in trials)
    assert (tmp_path / "out" / "trials").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    trial_end = [m for m in warnings if "tlsearch_trial_end" in m]
    assert len(trial_end) == 1, warnings  # once per plugin and hook, not once per trial
    assert "observer_raises.py" in trial_end[0] and "dashboard unreachable" in trial_end[0]
    assert any("tlsearch_study_end" in m and "study end crashed too" in m for m in warnings)


def test_raising_trial_start_observer_does_not_fail_the_trial(observed_study, tmp_path):
    result = run_study(observed_study("start_raises"), out_dir=tmp_path / "out", progress=False)
    assert [t.state for t in _trials(result)] == [COMPLETE]


def test_fail_trial_from_trial_end_fails_it_with_the_plugins_reason(observed_study, tmp_path):
    result = run_study(
        observed_study("fail"),
        out_dir=tmp_path / "out",
        progress=False,
        settings=WorkerSettings(max_failures_in_a_row=1),
    )
    trial = _trials(result)[0]
    assert trial.state == FAIL
    assert trial.user_attrs["failure_kind"] == "plugin"
    failure = trial.user_attrs["failure"]
    assert "model too large for the target device" in failure
    assert "observer_fail.py" in failure and "tlsearch_trial_end" in failure


def test_fail_trial_from_epoch_end_fails_it(observed_study, tmp_path):
    result = run_study(
        observed_study("epoch_fail"),
        out_dir=tmp_path / "out",
        progress=False,
        settings=WorkerSettings(max_failures_in_a_row=1),
    )
    trial = _trials(result)[0]
    assert trial.state == FAIL and "loss curve looks wrong" in trial.user_attrs["failure"]


def test_trial_pruned_from_epoch_end_prunes_it(observed_study, tmp_path):
    result = run_study(observed_study("prune"), out_dir=tmp_path / "out", progress=False)
    assert [t.state for t in _trials(result)] == [PRUNED]


@pytest.mark.parametrize("limit", [1, 2])
def test_worker_max_failures_in_a_row_stops_the_worker_after_that_many(observed_study, tmp_path, limit):
    """``tlsearch worker --max-failures-in-a-row N``: a worker whose every trial fails stops after N
    of them, with exit code 1 (bug caught: the flag not reaching WorkerSettings, or off by one)."""
    from click.testing import CliRunner

    from tlsearch.cli import main

    study = observed_study("fail", n_trials=5)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["worker", str(study), "--out", str(out), "--max-failures-in-a-row", str(limit)]
    )
    assert result.exit_code == 1, result.output
    from tlsearch.search.storage import make_storage

    storage = make_storage(str(out / "study.journal"))
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=storage).trials]
    assert states == [FAIL] * limit
