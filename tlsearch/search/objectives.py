"""Accuracy versus cost: what a trial returns, which trials are feasible, and which trial is best.

A study optimises its metric alone (the default), several objectives at once, or its metric under
cost limits (``docs/smarter-search.md``)::

    search: {objectives: [accuracy, latency_ms]}      # a Pareto front (Optuna multi-objective)
    search: {constraints: {latency_ms: 20}}           # max accuracy s.t. latency ≤ 20 ms

Costs are ``latency_ms`` (the trained model's batch-1 forward time on the trial's device: the
minimum of timed runs after warm-up, :func:`measure_latency`, measured once per architecture × input
size × device and only when an objective or constraint needs it, :mod:`tlsearch.train.latency`),
``params`` and ``gflops``; a trial of a study that reads latency records ``latency_ms`` as a user
attribute. A constrained trial stores ``constraints`` (value − limit per
constraint; ≤ 0 is feasible) for Optuna (``Trial.set_constraint``, or ``constraints_func`` on older Optuna).

Best-trial selection is cost-aware (:func:`select_best`): among trials whose score is equal (within
``search.tie_tolerance``), the one with fewer parameters wins, then the faster one; in a
multi-objective study, the most accurate trial of the Pareto front (same tie-break); with
constraints, only feasible trials count. The leaderboard orders trials the same way
(:func:`ranked_trials`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tlsearch.config import COST_OBJECTIVES, StudyConfig
from tlsearch.errors import TlsearchError
from tlsearch.train.latency import measure_latency as measure_latency  # the docs' examples import it here

LATENCY_ATTR = "latency_ms"
CONSTRAINTS_ATTR = "constraints"

T = TypeVar("T")


def latency_needed(config: StudyConfig) -> bool:
    """Whether the study reads ``latency_ms``: as an objective or as a constraint."""
    return LATENCY_ATTR in config.objectives or LATENCY_ATTR in config.search.constraints


def cost_value(name: str, attrs: dict[str, Any]) -> float:
    """The cost ``name`` (one of ``COST_OBJECTIVES``) from a trial's user attributes."""
    if name not in COST_OBJECTIVES:
        raise ValueError(f"unknown cost {name!r}; valid choices: {', '.join(COST_OBJECTIVES)}")
    value = attrs.get(name)
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise TlsearchError(
            f"the trial has no finite {name!r} to optimise (got {value!r}); "
            "its backbone does not report it — choose another objective"
        )
    return float(value)


def objective_values(config: StudyConfig, *, value: float, attrs: dict[str, Any]) -> float | list[float]:
    """What the objective returns: the metric ``value`` alone, or one value per ``config.objectives``."""
    if not config.multi_objective:
        return value
    return [value if i == 0 else cost_value(name, attrs) for i, name in enumerate(config.objectives)]


def constraint_values(config: StudyConfig, attrs: dict[str, Any]) -> list[float]:
    """``cost − limit`` per constraint of the study (≤ 0: satisfied), in the order the study lists them."""
    return [cost_value(name, attrs) - limit for name, limit in config.search.constraints.items()]


def record_constraints(trial: optuna.Trial, config: StudyConfig, attrs: dict[str, Any]) -> None:
    """Store a finished trial's constraint values: as the user attribute ``constraints`` (read by
    :func:`select_best`) and, on Optuna ≥ 5, with ``Trial.set_constraint`` (read by its samplers)."""
    if not config.search.constraints:
        return
    values = constraint_values(config, attrs)
    trial.set_user_attr(CONSTRAINTS_ATTR, values)
    if hasattr(trial, "set_constraint"):
        for name, value in zip(config.search.constraints, values, strict=True):
            trial.set_constraint(name, value)


def sampler_constraints_func(config: StudyConfig) -> Any:
    """The ``constraints_func`` for the sampler: only for a constrained study on an Optuna without
    ``Trial.set_constraint`` (Optuna 5 deprecates ``constraints_func`` for it)."""
    if not config.search.constraints or hasattr(optuna.trial.Trial, "set_constraint"):
        return None
    return constraints_func


def constraints_func(trial: FrozenTrial) -> Sequence[float]:
    """Optuna's ``constraints_func``: a trial without values (failed, pruned) counts as infeasible."""
    return trial.user_attrs.get(CONSTRAINTS_ATTR) or [math.inf]


def feasible(trial: FrozenTrial) -> bool:
    """True unless the trial recorded a violated constraint (studies without constraints: always)."""
    values = trial.user_attrs.get(CONSTRAINTS_ATTR)
    return values is None or all(v <= 0 for v in values)


def _maximise(study: optuna.Study) -> bool:
    return study.directions[0] == StudyDirection.MAXIMIZE


def primary_value(trial: FrozenTrial) -> float:
    """The trial's metric: its value, or its first value in a multi-objective study."""
    values = trial.values
    return float(values[0]) if values else math.nan


def cost_key(trial: FrozenTrial | optuna.Trial) -> tuple[float, float, float, int]:
    """Cheaper first: parameter count, then batch-1 latency, then training seconds, then trial number."""
    attrs = trial.user_attrs

    def num(key: str) -> float:
        v = attrs.get(key)
        return float(v) if isinstance(v, (int, float)) else math.inf

    return num("params"), num(LATENCY_ATTR), num("seconds"), trial.number


def _candidates(study: optuna.Study) -> list[FrozenTrial]:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    good = [t for t in complete if feasible(t)]
    return good or complete


def ranked_trials(study: optuna.Study, *, tie_tolerance: float = 0.0) -> list[FrozenTrial]:
    """Complete trials, best first: feasible before infeasible (least violation first); by metric,
    scores within ``tie_tolerance`` of the best remaining counting as equal and ordered by
    :func:`cost_key`. In a multi-objective study the Pareto front comes first."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    front_ids = {t._trial_id for t in study.best_trials} if len(study.directions) > 1 and complete else set()

    def tier(t: FrozenTrial) -> tuple[int, float, int]:
        violation = sum(max(v, 0.0) for v in t.user_attrs.get(CONSTRAINTS_ATTR) or [])
        return (0 if feasible(t) else 1, violation, 0 if (not front_ids or t._trial_id in front_ids) else 1)

    return order_by_score(
        complete,
        score=primary_value,
        cost=cost_key,
        maximize=_maximise(study),
        tie_tolerance=tie_tolerance,
        tier=tier,
    )


def order_by_score(
    items: Sequence[T],
    *,
    score: Callable[[T], float],
    cost: Callable[[T], tuple[Any, ...]],
    maximize: bool,
    tie_tolerance: float = 0.0,
    tier: Callable[[T], tuple[Any, ...]] | None = None,
) -> list[T]:
    """``items`` best first: by ``tier`` (lower first), then by ``score``; scores within
    ``tie_tolerance`` of the best remaining count as equal and go cheaper first (``cost``, lower
    first). The one ordering of trials: the leaderboard, best-trial selection and the live view
    (:class:`tlsearch.cli.console.Console`) all use it, so ties come out the same everywhere."""
    sign = -1.0 if maximize else 1.0
    level = tier or (lambda _: ())
    remaining = sorted(items, key=lambda t: (level(t), sign * score(t), cost(t)))
    ranked: list[T] = []
    while remaining:
        head = remaining[0]
        best = sign * score(head)
        ties = [t for t in remaining if level(t) == level(head) and sign * score(t) <= best + tie_tolerance]
        chosen = min(ties, key=cost)
        ranked.append(chosen)
        remaining.remove(chosen)
    return ranked


def select_best(study: optuna.Study, *, tie_tolerance: float = 0.0) -> FrozenTrial:
    """The trial to export: see the module docstring. Raises when no trial completed."""
    if not _candidates(study):
        raise TlsearchError(f"study {study.study_name!r} has no complete trial yet; nothing to export")
    return ranked_trials(study, tie_tolerance=tie_tolerance)[0]


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The non-dominated complete trials (``study.best_trials``), most accurate first; feasible ones
    only when the study has constraints (Optuna already excludes infeasible trials there)."""
    sign = -1.0 if _maximise(study) else 1.0
    return sorted(study.best_trials, key=lambda t: (sign * primary_value(t), cost_key(t)))
