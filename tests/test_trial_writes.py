"""Grouped trial writes (:mod:`tlsearch.search.trial_writes`): what a TrialWriter stages reaches
every kind of storage, in one commit per flush, as another process reads it."""

from __future__ import annotations

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError

from tests.postgres import postgres_url  # noqa: F401 - fixture
from tlsearch.search.storage import make_storage
from tlsearch.search.trial_writes import TrialWriter


def _storage_spec(kind: str, tmp_path, postgres: str | None) -> str:
    return {"journal": str(tmp_path / "w.journal"), "sqlite": f"sqlite:///{tmp_path / 'w.db'}"}.get(
        kind
    ) or str(postgres)


def _grouped_writes(spec: str) -> None:
    """A trial's parameters, intermediate values and user attributes staged by a TrialWriter reach
    the storage in one commit per flush, as a second process would read them."""
    storage = make_storage(spec, heartbeat_interval=None)
    study = optuna.create_study(storage=storage, study_name="w", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("n", 1, 9), n_trials=3)
    trial = study.ask()
    writer = TrialWriter(trial, interval=3600)
    writes: list[str] = []
    _count_commits(study, writes)
    with writer.sampling():
        x = trial.suggest_float("x", 0, 1)
        n = trial.suggest_int("n", 1, 9)
        kind = trial.suggest_categorical("kind", ["a", "b"])
        study._storage.set_trial_system_attr(
            trial._trial_id, "sampler_note", [1, 2]
        )  # as TPE's constant liar
    assert writes == [] and trial.params == {"x": x, "n": n, "kind": kind}  # staged, seen by the trial
    writer.flush(choices={"x": x})
    assert len(writes) == 1
    writer.report(0.5, 0)
    writer.progress(history=[{"accuracy": 0.5}])
    writer.report(0.9, 0)  # a step already reported keeps its first value, as in Optuna
    assert len(writes) == 1 and trial.user_attrs["history"] == [{"accuracy": 0.5}]
    other = optuna.load_study(study_name="w", storage=make_storage(spec))
    assert "history" not in other.trials[-1].user_attrs  # not committed within the interval
    writer.flush(metrics={"accuracy": 0.5}, seconds=1.5, choices={"x": x, "again": True})  # replaces
    assert len(writes) == 2
    study.tell(trial, 0.5)
    seen = optuna.load_study(study_name="w", storage=make_storage(spec)).trials[-1]
    assert seen.params == {"x": x, "n": n, "kind": kind}
    assert seen.intermediate_values == {0: 0.5} and seen.system_attrs["sampler_note"] == [1, 2]
    assert seen.user_attrs == {
        "choices": {"x": x, "again": True},
        "history": [{"accuracy": 0.5}],
        "metrics": {"accuracy": 0.5},
        "seconds": 1.5,
    }
    with pytest.raises(UpdateFinishedTrialError):
        writer.flush(late=True)  # a finished trial refuses writes, as with Optuna's own


def _count_commits(study: optuna.Study, writes: list[str]) -> None:
    """Record in ``writes`` each storage commit that writes (on a database reads commit too)."""
    storage = study._storage
    if isinstance(storage, optuna.storages.JournalStorage):
        backend = storage._backend
        append = backend.append_logs
        backend.append_logs = lambda logs: (writes.append("append"), append(logs))[1]  # type: ignore[method-assign]
        return
    import sqlalchemy

    engine = storage._backend.engine
    dirty: list[bool] = []

    def statement(conn, cursor, sql: str, *args) -> None:  # type: ignore[no-untyped-def]
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            dirty.append(True)

    def commit(conn) -> None:  # type: ignore[no-untyped-def]
        if dirty:
            writes.append("commit")
            dirty.clear()

    sqlalchemy.event.listen(engine, "before_cursor_execute", statement)
    sqlalchemy.event.listen(engine, "commit", commit)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_trial_writer_groups_writes(kind, tmp_path):
    _grouped_writes(_storage_spec(kind, tmp_path, None))


@pytest.mark.postgres
def test_trial_writer_groups_writes_on_postgres(postgres_url):  # noqa: F811
    _grouped_writes(postgres_url)


@pytest.mark.parametrize("kind", ["journal", "memory"])
def test_trial_writer_progress_commits_after_its_interval(kind, tmp_path):
    storage = make_storage(str(tmp_path / "p.journal")) if kind == "journal" else None
    study = optuna.create_study(storage=storage, study_name="p")
    trial = study.ask()
    writer = TrialWriter(trial, interval=0.0)
    writer.report(1.0, 0)
    writer.progress(history=[{"loss": 1.0}])
    seen = study._storage.get_trial(trial._trial_id)
    assert seen.user_attrs["history"] == [{"loss": 1.0}] and seen.intermediate_values == {0: 1.0}
