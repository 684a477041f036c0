"""The Objective's budget-skip path, driven through the real ``run_study``, ``Objective`` and
``wait_for_slot``: a trial that waits for a slot while another worker finishes the last one is
recorded as skipped (FAIL, ``skipped``, ``failure_kind`` "skipped") and trains nothing."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from tlsearch.search import objective as objective_module
from tlsearch.search import run_study

FAIL, COMPLETE = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE

# Another worker's trial, RUNNING and waiting for a slot with a lower number: it is ahead of ours.
OTHER_WORKER = textwrap.dedent("""
    from tlsearch import hookimpl

    @hookimpl
    def tlsearch_study_start(study, config, out_dir):
        trial_id = study._storage.create_new_trial(study._study_id)
        study._storage.set_trial_user_attr(trial_id, "budget_wait", True)
""")


def test_a_trial_whose_slot_another_worker_took_is_skipped_and_stops_the_study(
    write_study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bugs caught: the skipped mark, the recorded reason or the TrialFailed dropped from the
    skip path; the Objective not taking a slot at all (the trial would train past the budget)."""
    plugin = tmp_path / "other_worker.py"
    plugin.write_text(OTHER_WORKER)
    real_deadline = objective_module.study_deadline
    finished: list[int] = []

    def deadline_while_the_other_trial_finishes(study: optuna.Study) -> float | None:
        # read only once our trial has to wait: the other worker finishes its trial meanwhile
        other = study.get_trials(deepcopy=False)[0]
        assert other.state == optuna.trial.TrialState.RUNNING and other.user_attrs["budget_wait"]
        study._storage.set_trial_state_values(other._trial_id, COMPLETE, [0.5])
        finished.append(other.number)
        return real_deadline(study)

    monkeypatch.setattr(objective_module, "study_deadline", deadline_while_the_other_trial_finishes)
    config = write_study(
        plugins=[str(plugin)], space={"freezing": ["linear_probe"]}, search={"n_trials": 1, "pruner": "none"}
    )
    result = run_study(config, out_dir=tmp_path / "out", progress=False)
    trials = sorted(result.study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert finished, "our trial never waited for the other worker's slot"
    assert [t.state for t in trials] == [COMPLETE, FAIL]
    ours = trials[1]
    assert ours.user_attrs["skipped"] is True
    assert ours.user_attrs["failure_kind"] == "skipped"
    assert "budget of 1 finished trials was reached" in ours.user_attrs["failure"]
    assert "epochs" not in ours.user_attrs and ours.intermediate_values == {}
