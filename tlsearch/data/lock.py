"""An inter-process file lock, so that workers of one study build a shared cache entry only once.

On POSIX systems it is ``fcntl.flock`` on a lock file: the kernel releases the lock when the holder
exits or crashes, so a killed worker never leaves the cache locked. ``flock`` locks belong to an
open file description, so two threads of one process that each open the file also exclude each
other. Elsewhere (Windows) it falls back to ``msvcrt.locking``.

Lock files are left in place (empty): deleting them would open a window in which two processes
lock two different inodes of the same name.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tlsearch.errors import TlsearchError


class LockTimeout(TlsearchError):
    """Another process held a cache lock for longer than the caller was willing to wait."""


@contextmanager
def file_lock(path: Path, *, timeout: float | None = None, poll: float = 0.05) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    ``timeout`` (seconds, None: wait forever) raises :class:`LockTimeout` naming the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not _try_lock(fd):
            if deadline is not None and time.monotonic() > deadline:
                raise LockTimeout(
                    f"waited {timeout:g} s for the lock {str(path)!r}; is another worker stuck?"
                )
            time.sleep(poll)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


try:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
