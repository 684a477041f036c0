"""The journal file of a study, made safe against torn writes: a full disk never loses a trial.

Optuna's ``JournalFileBackend`` appends JSON lines and reads them back; a write that runs out of
space part-way leaves a partial last line, the next append lands on it, and from then on the file
no longer parses (``JSONDecodeError``): every completed trial becomes unreachable.
:class:`DurableJournalFileBackend` is the same file format, read the same way (plain Optuna and
optuna-dashboard still read the file), with three changes:

* **Appends leave no partial record.** The space is reserved first (``fallocate`` without
  changing the file's size, where the file system supports it), so a full disk fails before a
  byte is written; where it cannot be reserved, a write that fails part-way is truncated back to
  the old length. Either way :class:`JournalWriteError` says what happened and that nothing was
  written.
* **A torn tail is repaired.** On open, and under the lock before every append, a last line with
  no newline (or, on open, one that is not a journal record) is cut off; the bytes cut are kept
  next to the journal in ``<journal>.torn-<time>`` and a warning names both files. Only the tail
  is ever cut, and only from a file that starts with a journal record.
* **The lock names its owner**, so a lock left by a killed process is taken over at once (see
  :mod:`tlsearch.search.journal_lock`).

A record damaged in the middle of the file (not a torn tail) cannot be repaired safely; reading
it raises :class:`JournalCorruptError`, naming the file and the line.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import logging
import os
import time
from collections.abc import Generator
from typing import Any, BinaryIO

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file

from tlsearch.errors import TlsearchError
from tlsearch.search.journal_lock import OwnedJournalLock

log = logging.getLogger("tlsearch")

_BLOCK = 1 << 16
_FALLOC_FL_KEEP_SIZE = 1
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class JournalWriteError(TlsearchError):
    """An append to the journal failed (a full disk, most often); nothing of it was written."""


class JournalCorruptError(TlsearchError):
    """The journal holds a damaged record that is not a torn tail, so it cannot be repaired."""


class DurableJournalFileBackend(JournalFileBackend):
    """Optuna's journal file backend whose appends are all-or-nothing and whose torn tail is
    repaired on open (see the module docstring). Same file format as Optuna's."""

    def __init__(self, file_path: str, *, grace_period: int | None = 30) -> None:
        super().__init__(file_path, lock_obj=OwnedJournalLock(file_path, grace_period=grace_period))
        if _torn_tail(self._file_path, check_record=True) is not None:
            try:
                with get_lock_file(self._lock):
                    self._repair_tail(check_record=True)
            except PermissionError as exc:  # a read-only copy: readers skip a torn tail anyway
                log.warning(
                    "the journal %s ends in a torn record that cannot be repaired here (%s); reading it as it is",
                    self._file_path,
                    exc,
                )

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        try:
            yield from super().read_logs(log_number_from)
        except ValueError as exc:  # json.JSONDecodeError, or Optuna's "Invalid log format."
            line = _first_bad_line(self._file_path)
            raise JournalCorruptError(
                f"the journal {self._file_path} is damaged at line {line} ({exc}), in the middle of the file, "
                "so it cannot be repaired by cutting a torn tail; the records before that line are intact "
                "(a copy of the file cut at that line can be opened, losing the records after it)"
            ) from exc

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(entry, separators=(",", ":")) for entry in logs) + "\n").encode()
        with get_lock_file(self._lock):
            self._repair_tail(check_record=False)
            _append_all_or_nothing(self._file_path, data)

    def _repair_tail(self, *, check_record: bool) -> None:
        """Cut a torn last line, keeping a copy of it; the caller holds the lock."""
        torn = _torn_tail(self._file_path, check_record=check_record)
        if torn is None:
            return
        with open(self._file_path, "r+b") as f:
            f.seek(torn)
            tail = f.read()
            if not _starts_with_record(f) and torn > 0:
                raise JournalCorruptError(
                    f"{self._file_path} does not start with an Optuna journal record, so its last line "
                    "is not repaired; is it a journal (storage: path ending in .journal or .log)?"
                )
            kept = _keep_copy(self._file_path, tail)
            f.truncate(torn)
            f.flush()
            os.fsync(f.fileno())
        where = f"kept in {kept}" if kept else f"not kept (cannot write a copy): {tail[:120]!r}"
        log.warning(
            "the journal %s ended in a torn record (%d bytes, from a write that did not finish, e.g. on a "
            "full disk); cut back to its last complete record, no completed record is lost; the torn bytes are %s",
            self._file_path,
            len(tail),
            where,
        )


def _torn_tail(path: str, *, check_record: bool) -> int | None:
    """The offset where the torn last line of ``path`` starts, or ``None`` if it ends cleanly: a
    last line with no newline is torn; with ``check_record`` also one that is not a journal record."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        f.seek(size - 1)
        if f.read(1) != b"\n":
            return _line_start(f, size)
        if not check_record:
            return None
        start = _line_start(f, size - 1)
        f.seek(start)
        return None if _is_record(f.read(size - start)) else start


def _line_start(f: BinaryIO, end: int) -> int:
    """The offset just after the last newline before ``end`` (0 if there is none)."""
    position = end
    while position > 0:
        begin = max(0, position - _BLOCK)
        f.seek(begin)
        found = f.read(position - begin).rfind(b"\n")
        if found >= 0:
            return begin + found + 1
        position = begin
    return 0


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def _starts_with_record(f: BinaryIO) -> bool:
    f.seek(0)
    return _is_record(f.readline())


def _first_bad_line(path: str) -> int:
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n") or not _is_record(line):
                return number
    return 0


def _keep_copy(path: str, tail: bytes) -> str | None:
    """Write the torn bytes to ``<path>.torn-<time>``; ``None`` if that fails (a full disk)."""
    copy = f"{path}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    try:
        with open(copy, "xb") as f:
            f.write(tail)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(copy)
        return None
    return copy


def _append_all_or_nothing(path: str, data: bytes) -> None:
    """Append ``data`` and fsync it, or leave the file as it was and raise :class:`JournalWriteError`."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        start = os.fstat(fd).st_size
        try:
            _reserve(fd, start, len(data))
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
            os.fsync(fd)
        except OSError as exc:
            undone = _truncate(fd, start)
            full = exc.errno in _NO_SPACE
            raise JournalWriteError(
                f"cannot append to the journal {path}: {'the disk is full' if full else exc.strerror} "
                f"({errno.errorcode.get(exc.errno or 0, exc.errno)}, {len(data)} bytes); "
                + (
                    f"nothing was written (the file is back at its {start} bytes) and every completed trial is kept"
                    if undone
                    else "the file may end in a torn record, which the next open repairs"
                )
                + ("; free some space and rerun the same command to continue" if full else "")
            ) from exc
    finally:
        os.close(fd)


def _truncate(fd: int, length: int) -> bool:
    try:
        os.ftruncate(fd, length)
        os.fsync(fd)
    except OSError:
        return False
    return True


_fallocate: Any = None


def _reserve(fd: int, offset: int, length: int) -> None:
    """Reserve ``length`` bytes at ``offset`` without changing the file's size (Linux
    ``fallocate(FALLOC_FL_KEEP_SIZE)``), so a full disk fails here, before anything is written.
    Where it is not supported nothing happens (the caller truncates a failed write instead)."""
    global _fallocate
    if _fallocate is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            function = libc.fallocate64
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            function.restype = ctypes.c_int
            _fallocate = function
        except (OSError, AttributeError):
            _fallocate = False
    if _fallocate is False:
        return
    if _fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        if code in _NO_SPACE:
            raise OSError(code, os.strerror(code))
