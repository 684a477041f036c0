"""Storages under faults: a torn journal tail, a full disk (a real small tmpfs), a stale lock.

The bar for every test: each trial that was complete before the fault is still complete after
it, the storage opens again, and a further run adds trials.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tlsearch.errors import WriteError, disk_full_error
from tlsearch.search import journal
from tlsearch.search.journal import JournalCorruptError, JournalWriteError
from tlsearch.search.storage import make_storage
from tlsearch.search.study_dir import write_json_atomic
from tlsearch.testing import disk

COMPLETE = optuna.trial.TrialState.COMPLETE
optuna.logging.set_verbosity(optuna.logging.ERROR)


def _study(spec: str, *, create: bool = False) -> optuna.Study:
    storage = make_storage(spec, heartbeat_interval=None, grace_period=None)
    if create:
        return optuna.create_study(study_name="s", storage=storage)
    return optuna.load_study(study_name="s", storage=storage)


def _complete(spec: str) -> list[float]:
    return sorted(t.params["x"] for t in _study(spec).trials if t.state == COMPLETE)


def _quick(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1)


def _optuna_reads(path: Path) -> int:
    """How many complete trials plain Optuna (no tlsearch) reads from the journal."""
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    return sum(t.state == COMPLETE for t in study.trials)


@pytest.mark.parametrize("tail", [b'{"op_code":6,"worker_id":"w', b'{"op_code":6,"wor\n'])
def test_a_torn_tail_is_cut_off_kept_and_the_study_goes_on(tmp_path, tail, caplog):
    path = tmp_path / "study.journal"
    _study(str(path), create=True).optimize(_quick, n_trials=4)
    before = _complete(str(path))
    with open(path, "ab") as f:
        f.write(tail)  # what a write that ran out of space leaves behind

    with caplog.at_level("WARNING", logger="tlsearch"):
        study = _study(str(path))
        study.optimize(_quick, n_trials=2)

    assert set(before) <= set(_complete(str(path)))
    assert len(_complete(str(path))) == 6
    assert _optuna_reads(path) == 6  # the file is plain Optuna's format again
    kept = list(tmp_path.glob("study.journal.torn-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == tail
    assert "torn record" in caplog.text and str(kept[0]) in caplog.text


def test_a_record_damaged_mid_file_is_named_not_repaired(tmp_path):
    path = tmp_path / "study.journal"
    _study(str(path), create=True).optimize(_quick, n_trials=2)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"op_code":' + lines[2]  # an old torn write that a later append landed on
    path.write_bytes(b"".join(lines))
    with pytest.raises(JournalCorruptError, match=r"study\.journal is damaged at line 3"):
        _study(str(path))
    assert path.read_bytes() == b"".join(lines)  # nothing cut


def test_a_file_that_is_not_a_journal_is_not_cut(tmp_path):
    path = tmp_path / "notes.log"
    path.write_bytes(b"first line of someone's log\nsecond, unfinished")
    with pytest.raises(JournalCorruptError, match="does not start with an Optuna journal record"):
        make_storage(str(path))
    assert path.read_bytes().endswith(b"unfinished")


# --- a real full disk: a small tmpfs ---------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test (tests run as root here); skipped where not allowed."""
    try:
        with disk.small_disk(tmp_path / "disk", size="1m") as folder:
            yield folder
    except disk.NoSmallDisk as exc:
        pytest.skip(str(exc))


def _big_attr(trial: optuna.Trial) -> float:
    """A trial whose write needs more than the page left in the journal's last block."""
    trial.set_user_attr("history", "x" * 20000)
    return trial.suggest_float("x", 0, 1)


@pytest.mark.parametrize("reserve", [True, False], ids=["reserved", "truncated-back"])
def test_a_journal_on_a_full_disk_loses_nothing(small_disk, reserve, monkeypatch):
    """Filled to the last byte, an append fails with a clear error and leaves no partial record
    (space reserved first, or, where it cannot be, the failed write truncated back); every
    completed trial survives, the journal opens again, and once there is space trials go on."""
    if not reserve:
        monkeypatch.setattr(journal, "_fallocate", False)  # the file systems without fallocate
    path = small_disk / "study.journal"
    _study(str(path), create=True).optimize(_quick, n_trials=5)
    filler = disk.fill(small_disk)
    size = path.stat().st_size

    with pytest.raises(JournalWriteError, match="the disk is full.*nothing was written"):
        _study(str(path)).optimize(_big_attr, n_trials=1)

    assert path.read_bytes().endswith(b"\n")
    assert path.stat().st_size >= size
    assert len(_complete(str(path))) == 5  # opens while the disk is still full
    assert _optuna_reads(path) == 5
    filler.unlink()
    _study(str(path)).optimize(_big_attr, n_trials=2)
    assert len(_complete(str(path))) == 7


def test_sqlite_on_a_full_disk_fails_cleanly_and_loses_nothing(small_disk):
    """SQLite (WAL) on the same full disk: the write fails with SQLite's own error, the database
    stays consistent, every completed trial survives, and once there is space trials go on."""
    spec = f"sqlite:///{small_disk / 'study.db'}"
    _study(spec, create=True).optimize(_quick, n_trials=5)
    filler = disk.fill(small_disk)
    with pytest.raises(optuna.exceptions.StorageInternalError) as raised:
        _study(spec).optimize(_big_attr, n_trials=3)
    assert "database or disk is full" in str(raised.value.__cause__)
    said = disk_full_error(raised.value)  # what the CLI prints instead of a traceback
    assert said is not None and "the disk is full" in str(said) and "nothing was lost" in str(said)
    assert len(_complete(spec)) == 5
    filler.unlink()
    _study(spec).optimize(_big_attr, n_trials=2)
    assert len(_complete(spec)) == 7


def test_a_file_written_on_a_full_disk_is_whole_or_not_at_all(small_disk):
    """The study's own files (study.json, caches, checkpoints) go through one atomic write: on a
    full disk it raises WriteError naming the file, keeps the old version and leaves no temp file."""
    target = small_disk / "study.json"
    write_json_atomic(target, {"old": True})
    filler = disk.fill(small_disk)
    with pytest.raises(
        WriteError, match=rf"cannot write {target}: the disk is full \(ENOSPC\); nothing was lost"
    ):
        write_json_atomic(target, {"new": "x" * 100_000})
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in small_disk.iterdir()) == sorted([target.name, filler.name])


@pytest.fixture
def roomier_disk(tmp_path) -> Iterator[Path]:
    """An 8 MiB tmpfs: room for a few trials' checkpoints of the tiny study."""
    try:
        with disk.small_disk(tmp_path / "disk", size="8m") as folder:
            yield folder
    except disk.NoSmallDisk as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
def test_the_cli_on_a_full_disk_says_so_in_one_line_and_resumes_once_there_is_space(
    write_study, roomier_disk
):
    """``tlsearch run`` on a full disk: exit 1 with one line naming the file and saying the disk is
    full (no traceback); the completed trial survives and, once space is freed, the rerun goes on."""
    from click.testing import CliRunner

    from tlsearch.cli import main

    study, out = write_study(training={"epochs": 1}, search={"n_trials": 1}), roomier_disk / "out"
    runner = CliRunner()
    assert runner.invoke(main, ["run", str(study), "--out", str(out)]).exit_code == 0
    filler = disk.fill(roomier_disk)
    full = runner.invoke(main, ["run", str(study), "--out", str(out), "--n-trials", "2"])
    assert full.exit_code == 1, full.output
    lines = [line for line in full.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in full.output, full.output
    assert f"cannot write {out}/" in lines[0] and "the disk is full (ENOSPC); nothing was lost" in lines[0]
    assert _complete_in(out) == 1
    filler.unlink()
    again = runner.invoke(main, ["run", str(study), "--out", str(out), "--n-trials", "2"])
    assert again.exit_code == 0, again.output
    assert _complete_in(out) == 2


def _complete_in(out: Path) -> int:
    storage = make_storage(str(out / "study.journal"), heartbeat_interval=None, grace_period=None)
    return sum(t.state == COMPLETE for t in optuna.load_study(study_name="tiny", storage=storage).trials)


# --- a stale lock -----------------------------------------------------------------------------

HOLD_AND_DIE = textwrap.dedent("""
    import os, signal, sys
    from tlsearch.search.storage import make_storage
    storage = make_storage(sys.argv[1])
    storage._backend._lock.acquire()
    print("locked", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_lock_left_by_a_killed_process_is_taken_over_at_once(tmp_path):
    path = tmp_path / "study.journal"
    _study(str(path), create=True).optimize(_quick, n_trials=1)
    script = tmp_path / "hold.py"
    script.write_text(HOLD_AND_DIE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, env=env)
    assert done.returncode == -signal.SIGKILL and "locked" in done.stdout, done.stderr
    assert os.path.lexists(f"{path}.lock")

    started = time.monotonic()
    _study(str(path)).optimize(_quick, n_trials=1)
    assert time.monotonic() - started < 5  # Optuna's own lock waits its 30 s grace period
    assert len(_complete(str(path))) == 2
    assert not os.path.lexists(f"{path}.lock")


def test_a_live_owners_lock_is_waited_for(tmp_path):
    """The lock of a process that is alive is not taken: the writer waits until it is released."""
    path = tmp_path / "study.journal"
    _study(str(path), create=True)
    holder = make_storage(str(path))._backend._lock  # type: ignore[attr-defined]
    holder.acquire()
    waiter = subprocess.Popen(
        [sys.executable, "-c", f"{textwrap.dedent(_WRITE_ONE)}", str(path)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.0)
    assert waiter.poll() is None  # still waiting for this process's lock
    holder.release()
    assert waiter.wait(timeout=30) == 0
    assert len(_complete(str(path))) == 1


_WRITE_ONE = """
import sys, optuna
from tlsearch.search.storage import make_storage
study = optuna.load_study(study_name="s", storage=make_storage(sys.argv[1]))
study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
"""


def test_who_counts_as_a_dead_lock_owner():
    """A reused PID (same number, another start time) is dead; an owner on another host, or one
    alive here, cannot be declared dead; a lock file naming no owner decodes to none."""
    from tlsearch.search.journal_lock import LockOwner

    me = LockOwner.current()
    assert LockOwner.decode(me.encode()) == me and not me.is_dead()
    assert LockOwner(me.host, me.pid_namespace, me.pid, "1").is_dead() == (me.started != "-")
    assert not LockOwner("another-host", me.pid_namespace, 1, "1").is_dead()
    assert LockOwner.decode(b"") is None and LockOwner.decode(b"/some/study.journal") is None
