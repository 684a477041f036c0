"""A running trial's storage writes, grouped into few commits.

Optuna commits every sampled parameter, intermediate value and user attribute on its own: one
fsync each on a journal file, one WAL flush (and two or three statements) each on PostgreSQL, ~30
per trial of tlsearch. :class:`TrialWriter` stages them and commits each group in one transaction;
the trial's own view changes at once, so the objective reads what it wrote. Nothing is written
with less durability: a flush returns after the same fsync or commit Optuna's own write would.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Container, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    distribution_to_json,
    json_to_distribution,
)
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

PROGRESS_INTERVAL = 2.0


class TrialWriter:
    """The writes of one running trial, grouped into few storage commits.

    Optuna commits every sampled parameter, intermediate value and user attribute on its own: one
    fsync each on a journal file, one WAL flush each on PostgreSQL, ~30 per trial. A writer
    *stages* them instead — the trial's own view (``trial.user_attrs``, ``trial.params``, the
    intermediate values the pruner reads) changes at once — and :meth:`flush` commits everything
    staged in one transaction (one journal append, one database commit), atomically. Progress
    (:meth:`progress`: the per-epoch history and intermediate value) is flushed when ``interval``
    seconds passed since the last commit, so a live status lags by at most that, and always with
    the trial's next write; what a killed process had staged belonged to a trial the stale-trial
    sweep fails anyway."""

    def __init__(self, trial: optuna.Trial, *, interval: float = PROGRESS_INTERVAL) -> None:
        self.trial = trial
        self.interval = interval
        self._attrs: dict[str, Any] = {}
        self._steps: dict[int, float] = {}
        self._params: list[tuple[str, float, BaseDistribution]] = []
        self._system: dict[str, Any] = {}
        self._last = time.monotonic()

    def stage(self, **attrs: Any) -> None:
        """User attributes for the next commit (``trial.user_attrs`` shows them now)."""
        self._attrs.update(attrs)
        self.trial._cached_frozen_trial.user_attrs.update(attrs)

    def report(self, value: float, step: int) -> None:
        """``trial.report`` for the next commit: the pruner sees the value now; a step already
        reported keeps its first value, as in Optuna."""
        cached = self.trial._cached_frozen_trial.intermediate_values
        if step not in cached:
            cached[int(step)] = self._steps[int(step)] = float(value)

    def progress(self, **attrs: Any) -> None:
        """Stage ``attrs`` and commit when ``interval`` seconds passed since the last commit."""
        self.stage(**attrs)
        if time.monotonic() - self._last >= self.interval:
            self.flush()

    def flush(self, **attrs: Any) -> None:
        """Commit everything staged, and ``attrs``, in one write (nothing when nothing is staged)."""
        self.stage(**attrs)
        if self._attrs or self._steps or self._params or self._system:
            commit_trial_writes(
                self.trial.storage,
                self.trial._trial_id,
                params=self._params,
                steps=self._steps,
                attrs=self._attrs,
                system_attrs=self._system,
            )
            self._params, self._steps, self._attrs, self._system = [], {}, {}, {}
        self._last = time.monotonic()

    @contextmanager
    def sampling(self) -> Iterator[None]:
        """While the trial samples: the parameters it suggests are staged for the next commit,
        not written one by one (the sampler sees each at once, through the trial), and the
        study's trials are read once, not once per parameter group (TPE with the constant liar
        rereads them for every group; the trials of a few milliseconds earlier serve as well)."""
        trial, study = self.trial, self.trial.study
        storage = trial.storage
        view = _SamplingView(storage, self._params, self._system)
        trial.storage = study._storage = view  # type: ignore[assignment]
        try:
            yield
        finally:
            trial.storage = study._storage = storage


def _commit_rdb(
    storage: BaseStorage,
    backend: RDBStorage,
    trial_id: int,
    *,
    params: list[tuple[str, float, BaseDistribution]],
    steps: dict[int, float],
    attrs: dict[str, Any],
    system_attrs: dict[str, Any],
    request_id: str | None = None,
) -> None:
    """One transaction with few statements: the trial is checked once, intermediate values and
    user attributes are upserted with one statement per table (Optuna's own writes take two or
    three statements per value, each in a transaction of its own). ``request_id``: the proxy's
    resent call (:mod:`tlsearch.search.proxy_writes`): a group already applied is not again."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    from tlsearch.search.proxy_writes import APPLIED_KEY, applied_ids, remember

    # Integrity errors are raised, not ignored as Optuna does for its single writes (they would
    # drop the whole group here).
    with _create_scoped_session(backend.scoped_session) as session:
        # a resent group waits for its first copy's transaction (the trial's row lock), then sees it
        locked = request_id is not None
        trial: Any = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=locked)
        if request_id is not None:
            applied = applied_ids(session, trial_id)
            if request_id in applied:
                return
            system_attrs = {
                **system_attrs,
                APPLIED_KEY: remember(applied, request_id),
            }
        backend.check_trial_is_updatable(trial_id, trial.state)
        known = _known_distributions(storage, trial.study_id)
        for name, value, distribution in params:
            previous = known.get(name)
            if previous is None:
                record: Any = (
                    session.query(models.TrialParamModel)
                    .join(models.TrialModel)
                    .filter(models.TrialModel.study_id == trial.study_id)
                    .filter(models.TrialParamModel.param_name == name)
                    .first()
                )
                previous = json_to_distribution(record.distribution_json) if record else None
            if previous is not None:
                check_distribution_compatibility(previous, distribution)
            known[name] = distribution
            session.add(
                models.TrialParamModel(
                    trial_id=trial_id,
                    param_name=name,
                    param_value=value,
                    distribution_json=distribution_to_json(distribution),
                )
            )
        rows = [
            {"trial_id": trial_id, "step": step, **_stored_intermediate(models, value)}
            for step, value in steps.items()
        ]
        _upsert(session, models.TrialIntermediateValueModel, rows, keys=("trial_id", "step"))
        rows = [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            for key, value in attrs.items()
        ]
        _upsert(session, models.TrialUserAttributeModel, rows, keys=("trial_id", "key"))
        rows = [
            {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in system_attrs.items()
        ]
        _upsert(session, models.TrialSystemAttributeModel, rows, keys=("trial_id", "key"))


def _stored_intermediate(models: Any, value: float) -> dict[str, Any]:
    stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
    return {"intermediate_value": stored, "intermediate_value_type": kind}


def _upsert(session: Any, table: Any, rows: list[dict[str, Any]], *, keys: tuple[str, ...]) -> None:
    """Insert ``rows`` into ``table``, replacing those whose ``keys`` exist: one statement on SQLite
    and PostgreSQL (``ON CONFLICT … DO UPDATE``), one read and the writes elsewhere."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        from sqlalchemy.dialects import postgresql, sqlite

        insert = (sqlite if dialect == "sqlite" else postgresql).insert(table).values(rows)
        values = {c: insert.excluded[c] for c in rows[0] if c not in keys}
        session.execute(insert.on_conflict_do_update(index_elements=list(keys), set_=values))
        return
    first, second = (getattr(table, k) for k in keys)
    found = session.query(table).filter(first == rows[0][keys[0]], second.in_([r[keys[1]] for r in rows]))
    existing = {getattr(row, keys[1]): row for row in found}
    for values in rows:
        row = existing.get(values[keys[1]]) or table()
        for column, value in values.items():
            setattr(row, column, value)
        session.add(row)


def _known_distributions(storage: BaseStorage, study_id: int) -> dict[str, BaseDistribution]:
    """The parameter distributions Optuna's cache (``_CachedStorage``) holds for this study, the
    same dict, so that what this commit checks is remembered too (saves a query per parameter);
    a fresh dict where there is no cache."""
    studies = getattr(storage, "_studies", None)
    study = studies.get(study_id) if isinstance(studies, dict) else None
    known = getattr(study, "param_distribution", None)
    return known if isinstance(known, dict) else {}


class _SamplingView:
    """The storage as a sampling trial sees it: ``set_trial_param`` and ``set_trial_system_attr``
    (the sampler's notes, e.g. TPE's relative parameters for other workers) stage their value,
    ``get_all_trials`` answers from one read; everything else is the storage's."""

    def __init__(
        self,
        storage: BaseStorage,
        params: list[tuple[str, float, BaseDistribution]],
        system_attrs: dict[str, Any],
    ) -> None:
        self._storage = storage
        self._params = params
        self._system = system_attrs
        self._trials: dict[int, list[FrozenTrial]] = {}

    def set_trial_param(self, trial_id: int, name: str, value: float, distribution: BaseDistribution) -> None:
        self._params.append((name, value, distribution))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._system[key] = value

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        if study_id not in self._trials:
            self._trials[study_id] = self._storage.get_all_trials(study_id, deepcopy=False)
        trials = [t for t in self._trials[study_id] if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


def commit_trial_writes(
    storage: BaseStorage,
    trial_id: int,
    *,
    params: list[tuple[str, float, BaseDistribution]] = (),  # type: ignore[assignment]
    steps: dict[int, float] | None = None,
    attrs: dict[str, Any] | None = None,
    system_attrs: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> None:
    """Write parameters (internal representation), intermediate values, user and system attributes of the
    RUNNING trial ``trial_id`` in one transaction: one database commit (``RDBStorage``), one
    journal append with one fsync (``JournalStorage``), one call and one commit on the proxy
    through tlsearch's gRPC client (:mod:`tlsearch.search.grpc_storage`); any other storage (Optuna's
    plain proxy too) gets Optuna's writes one by one. The same checks as Optuna's own writes apply (a finished trial raises).
    ``request_id`` (the proxy's, on a database): the group is applied once however often it is sent."""
    steps, attrs, system_attrs = steps or {}, attrs or {}, system_attrs or {}
    backend = getattr(storage, "_backend", storage)
    if isinstance(backend, RDBStorage) and hasattr(backend, "scoped_session"):
        _commit_rdb(
            storage,
            backend,
            trial_id,
            params=params,
            steps=steps,
            attrs=attrs,
            system_attrs=system_attrs,
            request_id=request_id,
        )
        return
    if isinstance(storage, JournalStorage) and hasattr(storage, "_replay_result"):
        from optuna.storages.journal._storage import JournalOperation as Op

        logs: list[tuple[int, dict[str, Any]]] = [
            (
                Op.SET_TRIAL_PARAM,
                {
                    "param_name": name,
                    "param_value_internal": value,
                    "distribution": distribution_to_json(distribution),
                },
            )
            for name, value, distribution in params
        ]
        logs += [
            (Op.SET_TRIAL_INTERMEDIATE_VALUE, {"step": step, "intermediate_value": value})
            for step, value in steps.items()
        ]
        logs += [(Op.SET_TRIAL_USER_ATTR, {"user_attr": {key: value}}) for key, value in attrs.items()]
        logs += [(Op.SET_TRIAL_SYSTEM_ATTR, {"system_attr": {k: v}}) for k, v in system_attrs.items()]
        with storage._thread_lock:
            worker = storage._replay_result.worker_id
            storage._backend.append_logs(
                [{"op_code": op, "worker_id": worker, "trial_id": trial_id, **fields} for op, fields in logs]
            )
            storage._sync_with_backend()
        return
    grouped = getattr(storage, "commit_trial_writes", None)  # tlsearch's gRPC proxy client
    if grouped is not None and grouped(
        trial_id, params=list(params), steps=steps, attrs=attrs, system_attrs=system_attrs
    ):
        return
    for name, value, distribution in params:
        storage.set_trial_param(trial_id, name, value, distribution)
    for step, intermediate in steps.items():
        storage.set_trial_intermediate_value(trial_id, step, intermediate)
    for key, attr in attrs.items():
        storage.set_trial_user_attr(trial_id, key, attr)
    for key, attr in system_attrs.items():
        storage.set_trial_system_attr(trial_id, key, attr)
