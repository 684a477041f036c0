"""A database server whose disk is full (PostgreSQL's SQLSTATE 53100 "could not extend file …").

The study's folder has space, so the only failing writes are the storage's: the CLI must stop the
study at once with one line saying the server's disk is full, not fail trial after trial with "no
reason recorded" (what ``benchmarks/faults`` measured against a real PostgreSQL on a full tmpfs).
"""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy.exc

from tlsearch.errors import disk_full_error
from tlsearch.search import objective as objective_module
from tlsearch.search.storage import make_storage

COMPLETE = optuna.trial.TrialState.COMPLETE


class DiskFull(Exception):
    """What psycopg2 raises for SQLSTATE 53100 (``psycopg2.errors.DiskFull``, ``pgcode`` set by
    the server, which a test cannot set on the real class)."""

    pgcode = "53100"


SERVER_SAYS = (
    'could not extend file "base/16384/16499": wrote only 4096 of 8192 bytes at block 14\n'
    "HINT:  Check free disk space.\n"
)


def _as_optuna_raises(error: Exception) -> optuna.exceptions.StorageInternalError:
    """The chain Optuna's RDBStorage builds: StorageInternalError from SQLAlchemy's
    OperationalError from the driver's error."""
    try:
        try:
            raise sqlalchemy.exc.OperationalError("INSERT INTO trial_user_attributes …", {}, error) from error
        except sqlalchemy.exc.OperationalError as exc:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from exc
    except optuna.exceptions.StorageInternalError as raised:
        return raised


@pytest.mark.parametrize(
    "driver_error",
    [DiskFull(SERVER_SAYS), Exception(SERVER_SAYS)],  # by SQLSTATE; by the message where only text is left
    ids=["sqlstate", "message"],
)
def test_postgresqls_disk_full_is_recognised_through_optuna_and_sqlalchemy(driver_error):
    said = disk_full_error(_as_optuna_raises(driver_error))
    assert said is not None
    text = str(said)
    assert "PostgreSQL database: the database server's disk is full" in text
    assert 'could not extend file "base/16384/16499"' in text and "HINT" not in text  # its first line only
    assert "nothing was lost" in text and "rerun the same command" in text


def test_other_database_errors_are_not_called_a_full_disk():
    class Other(Exception):
        pgcode = "40001"  # serialization failure

    assert disk_full_error(_as_optuna_raises(Other("could not serialize access"))) is None
    assert disk_full_error(_as_optuna_raises(Exception('could not extend file "x": bad block'))) is None


@pytest.mark.slow
def test_the_cli_stops_at_once_with_one_line_when_the_servers_disk_fills(write_study, tmp_path, monkeypatch):
    """From the second trial on every storage write fails as PostgreSQL's does on a full disk: the
    run stops at that trial (not after 10 failed ones), exit 1, one line, and the first trial stays."""
    from click.testing import CliRunner

    from tlsearch.cli import main

    real = objective_module.Objective._call
    attempts: list[int] = []

    def call(self, trial):  # type: ignore[no-untyped-def]
        attempts.append(trial.number)
        if trial.number >= 1:
            raise _as_optuna_raises(DiskFull(SERVER_SAYS))
        return real(self, trial)

    monkeypatch.setattr(objective_module.Objective, "_call", call)
    study, out = write_study(training={"epochs": 1}, search={"n_trials": 5}), tmp_path / "out"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    done = CliRunner().invoke(main, ["run", str(study), "--out", str(out), "--storage", storage])
    assert done.exit_code == 1, done.output
    lines = [line for line in done.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in done.output, done.output
    assert "the database server's disk is full (could not extend file" in lines[0]
    assert attempts == [0, 1]  # stopped at the first trial that could not be written
    trials = optuna.load_study(
        study_name="tiny", storage=make_storage(storage, heartbeat_interval=None)
    ).trials
    assert sum(t.state == COMPLETE for t in trials) == 1
