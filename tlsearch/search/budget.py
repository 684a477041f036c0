"""A global budget of finished trials that holds exactly across any number of workers.

``n_trials`` of ``study.optimize`` counts per process, and ``MaxTrialsCallback`` checks only after
a trial: with W workers it overshoots by up to W−1. tlsearch makes "exactly N trials finish"
(COMPLETE or PRUNED) true with one rule, checked by each trial before it trains
(:func:`wait_for_slot`)::

    finished + |other RUNNING trials that are ahead of me| < N   →  train
    finished ≥ N                                                 →  skip (FAIL, failure_kind "skipped")
    otherwise                                                    →  wait and check again

A running trial is *ahead* unless it is itself waiting with a higher trial number. A trial
clears its ``budget_wait`` mark *before* reading, so whichever of two trials reads last always
sees the other: of the trials that go on to train, the one with the highest number counted every
other still running, hence at most N finish (the finished and the running trials come from one
read: with two reads, a trial finishing in between would be counted by neither). Waiting instead of skipping means a trial that fails
frees its slot for a waiting one, so no fewer than N finish either (while workers run). Between
trials, :class:`BudgetCallback` stops a worker whose next trial could only wait, so skipped trials
are rare (a race at the very end). Retries (enqueued WAITING trials) are only counted once a worker
runs them. A study-wide ``deadline`` (a study user attribute set by ``tlsearch run --timeout``)
stops workers that joined later too, and ends a running trial at its next epoch boundary
(complete, its best epoch kept: :class:`tlsearch.search.objective.Objective`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WAIT_ATTR = "budget_wait"
DEADLINE_ATTR = "deadline"
SKIPPED_ATTR = "skipped"


class BudgetReached(Exception):
    """Raised inside a trial that found the study's budget already spent by other workers."""


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _ahead(running: list[FrozenTrial], trial_id: int, number: int) -> int:
    return sum(
        1
        for t in running
        if t._trial_id != trial_id and (not t.user_attrs.get(WAIT_ATTR) or t.number < number)
    )


def study_deadline(study: optuna.Study) -> float | None:
    value = study.user_attrs.get(DEADLINE_ATTR)
    return float(value) if value is not None else None


def wait_for_slot(
    study: optuna.Study,
    trial: optuna.Trial,
    *,
    budget: int,
    poll: float = 0.5,
    deadline: float | Callable[[], float | None] | None = None,
    trials: list[FrozenTrial] | None = None,
) -> None:
    """Return when ``trial`` may train; raise :class:`BudgetReached` when the budget is spent (or the
    deadline passed). See the module docstring for why this is exact.

    ``deadline`` may be a function, read only if the trial has to wait (one storage read less per
    trial). ``trials``: the study's RUNNING and finished trials, read after ``trial`` started, to
    decide the first time without reading them again."""
    storage, study_id, trial_id = study._storage, study._study_id, trial._trial_id
    waiting = False
    while True:
        if waiting:
            storage.set_trial_user_attr(trial_id, WAIT_ATTR, False)
        if trials is None:
            # One read for both counts: a trial that finishes between two reads would be in neither.
            trials = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING, *FINISHED))
        running = [t for t in trials if t.state == TrialState.RUNNING]
        finished = len(trials) - len(running)
        if finished >= budget:
            raise BudgetReached(
                f"the study's budget of {budget} finished trials was reached by other workers"
            )
        if finished + _ahead(running, trial_id, trial.number) < budget:
            return
        trials = None
        if callable(deadline):
            deadline = deadline()
        if deadline is not None and time.time() > deadline:
            raise BudgetReached("the study's deadline passed while waiting for a free slot of the budget")
        storage.set_trial_user_attr(trial_id, WAIT_ATTR, True)
        waiting = True
        time.sleep(poll * (0.5 + random.random()))


class BudgetCallback:
    """After each trial: stop this worker when the budget is finished, or taken by trials running
    in other workers, or when the study's deadline has passed."""

    def __init__(self, budget: int | None) -> None:
        self.budget = budget

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if should_stop(study, self.budget):
            study.stop()


def should_stop(study: optuna.Study, budget: int | None) -> bool:
    deadline = study_deadline(study)
    if deadline is not None and time.time() >= deadline:
        return True
    if budget is None:
        return False
    trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, *FINISHED))
    busy = sum(1 for t in trials if t.state == TrialState.RUNNING and not t.user_attrs.get(WAIT_ATTR))
    return len(trials) - sum(t.state == TrialState.RUNNING for t in trials) + busy >= budget
