"""Watching a study that other processes run: their progress, as the events of a search.

``tlsearch run --workers N`` runs its trials in N child processes, so the parent's console
receives no event of its own. :class:`StudyWatcher` reads the study from its storage at each
:meth:`~StudyWatcher.poll` and turns what changed into the events :func:`tlsearch.search.run_study`
passes to ``on_event``:

* ``trial_start`` once a RUNNING trial has recorded its ``choices`` (right after sampling);
* ``epoch_end`` for each new entry of its ``history`` (which a worker writes at most every
  couple of seconds, see :mod:`tlsearch.search.trial_writes`);
* ``trial_end`` when it is COMPLETE, PRUNED or FAIL, with its value and last metrics (or the
  failure's reason).

Trials that had finished before the first poll produce no event (a console counts them from the
study itself). Each event's ``trial`` has the trial's ``number``, the ``study`` and the trial's
own ``datetime_start`` and ``datetime_complete``.
:func:`follow` polls until a study's budget is done: ``tlsearch status DIR --watch``, from any
machine that reaches the storage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tlsearch.search.budget import FINISHED

__all__ = ["StudyWatcher", "follow"]

ENDED = {TrialState.COMPLETE: "COMPLETE", TrialState.PRUNED: "PRUNED", TrialState.FAIL: "FAIL"}
FOLLOW_INTERVAL = 2.0  # seconds between looks when following a study from outside


@dataclass(frozen=True)
class WatchedTrial:
    """What an event tells of a trial that runs in another process: its number, its study, and
    when it started and ended as its own worker recorded it (so a console shows the trial's real
    duration, not the time between two looks)."""

    number: int
    study: optuna.Study
    datetime_start: datetime | None = None
    datetime_complete: datetime | None = None


@dataclass
class _Seen:
    started: bool = False
    epochs: int = 0


@dataclass
class StudyWatcher:
    """Emit ``on_event(name, **kw)`` for what other processes did in ``study`` since the last poll."""

    study: optuna.Study
    on_event: Callable[..., None]
    _seen: dict[int, _Seen] = field(default_factory=dict)
    _ended: set[int] | None = None

    def poll(self) -> list[FrozenTrial]:
        """Look at the study once, emit what changed, and return the trials read."""
        trials = self.study.get_trials(deepcopy=False)
        if self._ended is None:  # the first look: what has ended already is history, not news
            self._ended = {t.number for t in trials if t.state in ENDED}
        for t in trials:
            if t.number not in self._ended and t.state in (TrialState.RUNNING, *ENDED):
                self._follow(t)
        return trials

    def _follow(self, t: FrozenTrial) -> None:
        assert self._ended is not None
        seen = self._seen.setdefault(t.number, _Seen())
        trial = WatchedTrial(t.number, self.study, t.datetime_start, t.datetime_complete)
        choices = t.user_attrs.get("choices")
        if not seen.started and choices is not None:
            seen.started = True
            self.on_event("trial_start", trial=trial, choices=choices)
        history = t.user_attrs.get("history") or []
        if seen.started:  # epochs only after the start, so that a console sees them in order
            for epoch in range(seen.epochs, len(history)):
                self.on_event("epoch_end", trial=trial, epoch=epoch, metrics=history[epoch])
            seen.epochs = len(history)
        if t.state in ENDED:
            self._ended.add(t.number)
            del self._seen[t.number]
            if seen.started:  # not a trial that ended before sampling (one skipped by a full budget)
                self.on_event("trial_end", trial=trial, **_outcome(t, history))


def follow(
    study: optuna.Study,
    on_event: Callable[..., None],
    *,
    budget: int | None,
    interval: float = FOLLOW_INTERVAL,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Watch ``study`` (run by any workers, anywhere) until ``budget`` trials have finished and
    none is running; without a budget, until interrupted (Ctrl-C). What ``tlsearch status --watch``
    does."""
    watcher = StudyWatcher(study, on_event)
    while True:
        trials = watcher.poll()
        finished = sum(t.state in FINISHED for t in trials)
        running = any(t.state == TrialState.RUNNING for t in trials)
        if budget is not None and finished >= budget and not running:
            return
        sleep(interval)


def _outcome(t: FrozenTrial, history: list[dict[str, Any]]) -> dict[str, Any]:
    """``state``, ``value`` and ``metrics`` of an ended trial, as its own worker reported them."""
    state = ENDED[t.state]
    if state == "FAIL":
        return {"state": state, "value": None, "metrics": {"failure": t.user_attrs.get("failure", "")}}
    value = t.values[0] if state == "COMPLETE" and t.values else None
    metrics = t.user_attrs.get("metrics") or (history[-1] if history else {})
    return {"state": state, "value": value, "metrics": metrics}
