"""The proxy's writes, applied once however often a client sends them.

A call whose answer is lost (the proxy killed after its commit, before replying; a deadline that
passed while the proxy was slow or hung) is sent again by the client (:mod:`tlsearch.search.grpc_storage`),
and the proxy would apply it twice: a trial finished twice raises "already finished", a trial
created twice is one trial more than the budget counts on, parameters written twice break a
unique key. Each of tlsearch's own proxy methods therefore carries a request id (a random UUID
per call, the same in every resend), which the proxy records **in the same transaction** as the
write:

* a group of trial writes or a trial's end: the trial's system attribute ``tlsearch:applied``
  lists the ids of the last :data:`KEEP` writes applied to it; a resent one is answered as the
  first was (nothing written again), whatever the trial's state now;
* a new trial: its system attribute ``tlsearch:created_by`` holds the id; a resent creation
  returns that trial's id instead of creating another.

A resend and its first copy can also arrive together (the first was only slow): the trial's row
(the study's, for a creation) is locked first, so the second waits for the first's commit and
then sees its id (PostgreSQL and MySQL; SQLite, one writer at a time, has no row locks).
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Any

from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

APPLIED_KEY = "tlsearch:applied"
CREATED_KEY = "tlsearch:created_by"
#: ids remembered per trial: a resend comes before the client's next write to the trial, so one
#: would do; a few more cover a stale copy of a write that arrives after later ones
KEEP = 8


def database(storage: BaseStorage) -> RDBStorage:
    """The database behind the proxy's storage (Optuna's cache in front of it)."""
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage):
        raise TypeError(f"the proxy serves a database (RDBStorage), not {type(backend).__name__}")
    return backend


def applied_ids(session: Any, trial_id: int) -> list[str]:
    """The request ids of the last writes applied to ``trial_id`` (in ``session``'s transaction)."""
    from optuna.storages._rdb import models

    table = models.TrialSystemAttributeModel
    row = session.query(table).filter(table.trial_id == trial_id, table.key == APPLIED_KEY).one_or_none()
    return list(json.loads(row.value_json)) if row is not None else []


def remember(applied: list[str], request_id: str) -> list[str]:
    """``applied`` with ``request_id`` last, the oldest dropped beyond :data:`KEEP`."""
    return [*applied, request_id][-KEEP:]


def _set_applied(session: Any, trial_id: int, ids: list[str]) -> None:
    from optuna.storages._rdb import models

    table = models.TrialSystemAttributeModel
    row = session.query(table).filter(table.trial_id == trial_id, table.key == APPLIED_KEY).one_or_none()
    if row is None:
        row = table(trial_id=trial_id, key=APPLIED_KEY)
    row.value_json = json.dumps(ids)
    session.add(row)


def finish_once(
    storage: BaseStorage,
    trial_id: int,
    state: TrialState,
    values: list[float] | None,
    *,
    request_id: str,
) -> bool:
    """``set_trial_state_values`` (same checks, same answer as Optuna's) in one transaction that
    records ``request_id``; a resent one answers True (its first copy did) without writing."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy import exc as sqlalchemy_exc

    backend = database(storage)
    try:
        with _create_scoped_session(backend.scoped_session) as session:
            trial: Any = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            applied = applied_ids(session, trial_id)
            if request_id in applied:
                return True
            backend.check_trial_is_updatable(trial_id, trial.state)
            if state == TrialState.RUNNING and trial.state != TrialState.WAITING:
                return False  # another worker took this waiting trial first
            for objective, value in enumerate(values or ()):
                backend._set_trial_value_without_commit(session, trial, objective, value)
            trial.state = state
            if state == TrialState.RUNNING:
                trial.datetime_start = datetime.now()
            if state.is_finished():
                trial.datetime_complete = datetime.now()
            _set_applied(session, trial_id, remember(applied, request_id))
    except sqlalchemy_exc.IntegrityError:
        return False
    return True


def create_once(storage: BaseStorage, study_id: int, template: FrozenTrial | None, *, request_id: str) -> int:
    """``create_new_trial`` in one transaction that records ``request_id`` on the new trial; a
    resent one returns the trial its first copy created."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    backend = database(storage)
    if template is not None and (
        APPLIED_KEY in template.system_attrs or CREATED_KEY in template.system_attrs
    ):
        template = copy.deepcopy(template)  # a copy of another trial: not its ids
        template.system_attrs.pop(APPLIED_KEY, None)
        template.system_attrs.pop(CREATED_KEY, None)
    attrs = models.TrialSystemAttributeModel
    with _create_scoped_session(backend.scoped_session) as session:
        # Optuna takes the same lock to number the trial; a resend waits here for its first copy
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        found = (
            session.query(attrs.trial_id)
            .join(models.TrialModel, models.TrialModel.trial_id == attrs.trial_id)
            .filter(
                models.TrialModel.study_id == study_id,
                attrs.key == CREATED_KEY,
                attrs.value_json == json.dumps(request_id),
            )
            .first()
        )
        if found is not None:
            return int(found[0])
        trial: Any = backend._get_prepared_new_trial(study_id, template, session)
        session.add(attrs(trial_id=trial.trial_id, key=CREATED_KEY, value_json=json.dumps(request_id)))
        trial_id = int(trial.trial_id)
    return trial_id
