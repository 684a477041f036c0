"""Storages: URL/path parsing, the embedded default, and many workers creating one study at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import optuna
import pytest

from tests.postgres import postgres_url  # noqa: F401 - fixture
from tlsearch.errors import ConfigError
from tlsearch.search import StudyDir
from tlsearch.search.storage import check_concurrency, make_storage, redact, storage_kind


def test_storage_kinds_and_errors(tmp_path):
    assert storage_kind("postgresql://u@h/db") == "rdb"
    assert storage_kind("postgresql+psycopg2://u@h/db") == "rdb"
    assert storage_kind("sqlite:///x.db") == "sqlite"
    assert storage_kind(str(tmp_path / "s.journal")) == "journal"
    assert storage_kind("journal:/x/y") == "journal"
    with pytest.raises(ConfigError, match="valid forms"):
        storage_kind("study.txt")
    assert redact("postgresql://me:secret@host/db") == "postgresql://me:***@host/db"
    assert isinstance(make_storage(str(tmp_path / "s.journal")), optuna.storages.JournalStorage)


def test_sqlite_refused_for_several_processes():
    check_concurrency("sqlite:///a.db", 1)
    check_concurrency("/tmp/a.journal", 4)
    with pytest.raises(ConfigError, match="not safe for 3 processes"):
        check_concurrency("sqlite:///a.db", 3)


def test_default_storage_is_the_journal_unless_the_folder_has_sqlite(tmp_path):
    assert StudyDir(tmp_path / "new").default_storage.endswith("study.journal")
    legacy = tmp_path / "old"
    legacy.mkdir()
    (legacy / "study.db").touch()
    assert StudyDir(legacy).default_storage.startswith("sqlite:///")


CREATE_AND_RUN = textwrap.dedent("""
    import sys
    from tlsearch.config import load_config
    from tlsearch.search.study import open_study
    study = open_study(load_config(sys.argv[1]), sys.argv[2], worker=int(sys.argv[3]))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
""")


@pytest.mark.postgres
def test_many_workers_create_one_study_on_a_fresh_database(postgres_url, write_study, tmp_path):  # noqa: F811
    """6 processes start at once on an empty database: Optuna's tables and the study are created
    once, every process loads it, and every trivial trial lands."""
    study = write_study()
    script = tmp_path / "create_and_run.py"
    script.write_text(CREATE_AND_RUN)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(study), postgres_url, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    loaded = optuna.load_study(study_name="tiny", storage=make_storage(postgres_url))
    states = [t.state for t in loaded.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 6
    assert len({t.params["x"] for t in loaded.trials}) == 6  # each worker sampled with its own seed
