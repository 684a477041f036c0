"""PostgreSQL under a full disk: a private server whose data folder is on a small tmpfs.

The study's own folder (``--out``) stays on the ordinary disk, so the only writes that can fail are
the server's: the row shows what tlsearch does when PostgreSQL itself runs out of space (an
``ERROR`` such as "could not extend file …: No space left on device", SQLSTATE 53100, or a
``PANIC`` when the WAL cannot be written). Needs root (the tmpfs) and PostgreSQL's server binaries
(``/usr/lib/postgresql/*/bin`` or ``TLSEARCH_PG_BIN``); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness import Outcome, Sandbox, Skip, complete_trials, fill, outcome, scenario, small_disk

PORT = int(os.environ.get("TLSEARCH_PG_FAULT_PORT", "55432"))
LEFT_FREE = 300 * 1024  # what the filler leaves: a few hundred KiB, as a disk that is nearly full


def _bin() -> Path:
    found = os.environ.get("TLSEARCH_PG_BIN") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), ""
    )
    if not found or not (Path(found) / "pg_ctl").exists():
        raise Skip("no PostgreSQL server binaries (set TLSEARCH_PG_BIN to the folder of pg_ctl)")
    if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
        raise Skip("needs root, runuser and a 'postgres' user to run the server")
    return Path(found)


def _as_postgres(*command: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", *map(str, command)], capture_output=True, text=True, timeout=120
    )
    if check and done.returncode:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {(done.stderr or done.stdout)[-400:]}")
    return done


@contextlib.contextmanager
def _server(disk: Path) -> Iterator[tuple[Path, str]]:
    """initdb on ``disk``, start the server on loopback (trust auth), create database ``db``;
    always stopped at the end. Yields the pg_ctl binary folder and the storage URL."""
    pg_bin = _bin()
    data = disk / "pgdata"
    data.mkdir(mode=0o700)
    shutil.chown(data, "postgres", "postgres")
    _as_postgres(pg_bin / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--wal-segsize=1", "-N")
    started = False
    try:
        _as_postgres(
            pg_bin / "pg_ctl", "-D", data, "-l", data / "server.log", "-w", "-t", "60", "start",
            "-o", f"-p {PORT} -c listen_addresses=127.0.0.1 -k {data} -c fsync=on -c max_wal_size=32MB",
        )  # fmt: skip
        started = True
        _as_postgres(pg_bin / "createdb", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "db")
        yield pg_bin, f"postgresql://postgres@127.0.0.1:{PORT}/db"
    finally:
        if started or (data / "postmaster.pid").exists():
            _as_postgres(pg_bin / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)


def _running(pg_bin: Path, disk: Path) -> bool:
    return _as_postgres(pg_bin / "pg_ctl", "-D", disk / "pgdata", "status", check=False).returncode == 0


@scenario("disk full (64 MiB tmpfs, 300 KiB left), PostgreSQL server's data, then space freed")
def full_disk_postgres(sandbox: Sandbox) -> Outcome:
    _bin()  # skip before mounting anything
    # Its own mount point under /tmp (not in the 0700 sandbox), so that the postgres user reaches it.
    mount = Path(tempfile.mkdtemp(prefix="tlsearch-pgdisk-"))
    try:
        with small_disk(mount, size="64m") as disk, _server(disk) as (pg_bin, storage):
            study, out = sandbox.study(n_trials=3), sandbox.root / "out"  # the study folder: not on the tmpfs
            args = ("--storage", storage)
            first = sandbox.run(study, out, *args)
            before = complete_trials(storage)
            filler = fill(disk)
            with open(filler, "r+b") as f:
                f.truncate(max(0, os.path.getsize(filler) - LEFT_FREE))
            full = sandbox.run(study, out, *args, "--n-trials", "60")
            alive = _running(pg_bin, disk)
            complete_when_full = complete_trials(storage) if alive else set()
            while_full = len(complete_when_full & before) if alive else -1
            log = (disk / "pgdata" / "server.log").read_text(errors="replace")
            filler.unlink()
            if not alive:  # a PANIC stops the server: start it again, as an operator would
                _as_postgres(pg_bin / "pg_ctl", "-D", disk / "pgdata", "-w", "-t", "60", "start",
                             "-o", f"-p {PORT} -c listen_addresses=127.0.0.1 -k {disk / 'pgdata'}")  # fmt: skip
            again = sandbox.run(study, out, *args, "--n-trials", "60")
            errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
            traceback = "traceback" if "Traceback" in full.stderr else "no traceback"
            server = "server kept running" if alive else "server stopped (PANIC)"
            pg_said = next(
                (
                    line.split(":  ", 1)[-1][:90]
                    for line in log.splitlines()
                    if "could not extend" in line or "No space left" in line
                ),
                "none",
            )
            note = (
                f"first run exit {first.returncode}; the run on the full disk: "
                f"{len(complete_when_full) - len(before)} more trial(s) complete, then exit {full.returncode}, "
                f"{traceback}, {len(errors)} error line(s) {errors[0][:110] + '…' if errors else ''!r}, {server}, "
                f"{while_full}/{len(before)} readable; server log: {pg_said!r}; after freeing: exit {again.returncode}"
            )
            clear = (
                full.returncode != 0
                and traceback == "no traceback"
                and len(errors) == 1
                and "disk is full" in errors[0]
            )
            sandbox.log.append(f"server log tail:\n{log[-3000:]}")
            return outcome(storage, before=before, expected=60, note=note, extra_ok=clear)
    finally:
        with contextlib.suppress(OSError):
            mount.rmdir()
