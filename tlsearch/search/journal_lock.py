"""The journal file's lock, which names its owner so that a dead owner's lock is taken over at once.

Optuna's journal locks (``JournalFileSymlinkLock``, ``JournalFileOpenLock``) are a file created
exclusively next to the journal (``study.journal.lock``) and removed on release. A process killed
while it holds one leaves the file behind, and every other process then waits Optuna's grace
period (30 s) before it forcibly releases it. :class:`OwnedJournalLock` creates the same file, so
it excludes Optuna's own locks and theirs exclude it, but writes its owner into it: host, PID
namespace, PID and the process's start time. A waiting process on the same host and in the same
PID namespace whose owner is no longer alive (no such PID, a zombie, or a PID reused by a younger
process) takes the lock over at once. A lock that names no owner (one of Optuna's, or one whose
owner could not write it, e.g. on a full disk) or an owner on another host falls back to
Optuna's grace period.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from optuna.storages.journal import JournalFileOpenLock

log = logging.getLogger("tlsearch")

_OWNER_PREFIX = "tlsearch-journal-lock"


@dataclass(frozen=True)
class LockOwner:
    """Who holds a journal lock: enough to tell, from the same host, whether it is still alive."""

    host: str
    pid_namespace: str
    pid: int
    started: str

    def encode(self) -> bytes:
        return f"{_OWNER_PREFIX} {self.host} {self.pid_namespace} {self.pid} {self.started}\n".encode()

    @classmethod
    def decode(cls, data: bytes) -> LockOwner | None:
        """The owner a lock file names, or ``None`` (empty, Optuna's own, or unreadable)."""
        parts = data.decode("utf-8", "replace").split()
        if len(parts) != 5 or parts[0] != _OWNER_PREFIX or not parts[3].isdigit():
            return None
        return cls(host=parts[1], pid_namespace=parts[2], pid=int(parts[3]), started=parts[4])

    @classmethod
    def current(cls) -> LockOwner:
        pid = os.getpid()
        return cls(host=_host(), pid_namespace=_pid_namespace(), pid=pid, started=_start_time(pid) or "-")

    def is_dead(self) -> bool:
        """Whether this owner is certainly gone; ``False`` when that cannot be told from here."""
        if self.host != _host() or self.pid_namespace != _pid_namespace():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
        started = _start_time(self.pid)
        if started is None:
            return False
        return started == "Z" or (self.started != "-" and started != self.started)


def _host() -> str:
    return socket.gethostname().replace(" ", "_") or "-"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").replace(" ", "_")
    except OSError:
        return "-"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat``), ``"Z"`` for a
    zombie, ``None`` where there is no ``/proc``."""
    if not os.path.isdir("/proc/self"):
        return None  # no /proc (macOS, Windows): only "no such PID" tells a dead owner
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return "Z"  # the PID answered a moment ago and is gone now
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and parentheses
    if len(fields) < 20:
        return None
    return "Z" if fields[0] in ("Z", "X") else fields[19]


class OwnedJournalLock(JournalFileOpenLock):
    """Optuna's open lock on ``<journal>.lock`` that names its owner, so a dead owner's lock is
    taken over at once instead of after ``grace_period`` seconds (see the module docstring)."""

    def __init__(self, filepath: str, grace_period: int | None = 30) -> None:
        super().__init__(filepath, grace_period=grace_period)
        self.lock_path = self._lock_file

    def acquire(self) -> bool:
        """Create the lock file, waiting for its holder. A dead holder's file is taken over at
        once; one whose holder cannot be told (another host, no owner recorded) after
        ``grace_period`` seconds without change, as Optuna does."""
        delay = 0.001
        changed, mtime, warned = time.monotonic(), None, time.monotonic()
        while True:
            try:
                fd = os.open(self._lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner.is_dead() and self._take_over(owner):
                    continue
                try:
                    current = os.lstat(self._lock_file).st_mtime
                except OSError:
                    continue  # released meanwhile
                if current != mtime:
                    mtime, changed = current, time.monotonic()
                if time.monotonic() - warned > 10:
                    log.warning("waiting for the journal lock %s (held by %s)", self._lock_file, owner or "?")
                    warned = time.monotonic()
                if self.grace_period is not None and time.monotonic() - changed > self.grace_period:
                    log.warning(
                        "the journal lock %s has not changed for %d s; releasing it",
                        self._lock_file,
                        self.grace_period,
                    )
                    with contextlib.suppress(RuntimeError):
                        self.release()
                    continue
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            try:
                try:
                    os.write(fd, LockOwner.current().encode())
                except OSError as exc:  # a full disk: the lock holds, only its owner is not recorded
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        self.release()
                        raise
            finally:
                os.close(fd)
            return True

    def _owner(self) -> LockOwner | None:
        try:
            with open(self._lock_file, "rb") as f:
                return LockOwner.decode(f.read(512))
        except OSError:
            return None

    def _take_over(self, dead: LockOwner) -> bool:
        """Remove the lock ``dead`` left; ``False`` if another process was quicker. The file is
        first renamed to a unique name and read again there: if it no longer names ``dead`` (a
        live process took it over meanwhile), it is put back."""
        aside = f"{self._lock_file}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(self._lock_file, aside)
        except FileNotFoundError:
            return True  # released meanwhile: try again
        except OSError:
            return False
        try:
            with open(aside, "rb") as f:
                found = LockOwner.decode(f.read(512))
            if found != dead:
                with contextlib.suppress(OSError):
                    os.link(aside, self._lock_file)
                return False
            log.warning(
                "took over the journal lock %s left by process %d on %s, which is no longer running",
                self._lock_file,
                dead.pid,
                dead.host,
            )
            return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(aside)
