"""The exceptions tlsearch raises on purpose, each carrying a message meant for the user."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

#: the errno values of a full disk (no space left, or the user's quota used up)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class TlsearchError(Exception):
    """Base of every error tlsearch reports to the user (the CLI prints the message, no traceback)."""

    exit_code = 1


class ConfigError(TlsearchError):
    """A study config is invalid. Raised before any work starts; the CLI exits with code 2."""

    exit_code = 2


class PluginError(TlsearchError):
    """A plugin is missing, misdeclared, duplicated or failed to load."""

    exit_code = 2


class PluginCallError(TlsearchError):
    """A plugin raised while tlsearch called it; the message names the plugin, its provider and the call."""


class DataError(TlsearchError):
    """The images or labels cannot be used (the message names the file). Found before the first
    trial (the data is checked once up front), so the CLI exits with code 2, as for a config error."""

    exit_code = 2


class UsageError(TlsearchError):
    """A command names something the study does not have (a trial number, …); the CLI exits with code 2."""

    exit_code = 2


class WriteError(TlsearchError):
    """A file of the study could not be written (a full disk, most often); the message names the
    file. Each such file is written whole or not at all (:mod:`tlsearch.files`), and the trials
    already complete are in the storage, so nothing is lost: free space and rerun to resume."""

    @classmethod
    def from_os_error(cls, path: str | os.PathLike[str], exc: OSError) -> WriteError:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        if exc.errno in NO_SPACE:
            what = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is used up"
            return cls(
                f"cannot write {os.fspath(path)}: {what} ({code}); nothing was lost (the file is written "
                "whole or not at all, and every completed trial is kept): free some space and rerun the "
                "same command to resume"
            )
        return cls(
            f"cannot write {os.fspath(path)}: {exc.strerror or exc} ({code}); nothing else was changed"
        )


def disk_full_error(exc: BaseException) -> WriteError | None:
    """The :class:`WriteError` for an error that a full disk caused anywhere in its chain (an
    ``OSError`` ENOSPC/EDQUOT, SQLite's "database or disk is full" or PostgreSQL's SQLSTATE 53100
    "could not extend file …" under Optuna's storage error), else None: what the CLI prints
    instead of a traceback."""
    seen: BaseException | None = exc
    for _ in range(32):  # a chain is short; a cycle must not hang the error path
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in NO_SPACE:
            return WriteError.from_os_error(seen.filename or "a file of the study", seen)
        if "database or disk is full" in str(seen):
            return WriteError(
                "cannot write the study's SQLite database: the disk is full (database or disk is full); "
                "nothing was lost (the transaction was rolled back and every completed trial is kept): "
                "free some space and rerun the same command to resume"
            )
        if _postgres_disk_full(seen):
            return WriteError(
                "cannot write the study's PostgreSQL database: the database server's disk is full "
                f"({_first_line(getattr(seen, 'orig', None) or seen)}); nothing was lost (the transaction was rolled back and every "
                "completed trial is kept): free some space on the server and rerun the same command to resume"
            )
        seen = seen.__cause__ or seen.__context__
    return None


#: PostgreSQL's SQLSTATE for ``disk_full`` ("could not extend file …", "No space left on device")
PG_DISK_FULL = "53100"


def _postgres_disk_full(exc: BaseException) -> bool:
    """PostgreSQL's disk-full error as its driver raises it: SQLSTATE 53100 (psycopg2's ``pgcode``,
    psycopg 3's ``sqlstate``), or its message where only the text is left."""
    if PG_DISK_FULL in (getattr(exc, "pgcode", None), getattr(exc, "sqlstate", None)):
        return True
    text = str(exc)
    return "could not extend file" in text and ("disk space" in text or "No space left" in text)


def _first_line(exc: BaseException) -> str:
    """The server's own words (SQLAlchemy's error is given its driver's, ``orig``), first line."""
    lines = str(exc).strip().splitlines()
    return short_repr(lines[0], 160).strip("'\"") if lines else type(exc).__name__


class StorageUnavailable(TlsearchError):
    """The study's storage (the gRPC storage proxy) stopped answering (gone, or hung: no answer
    within ``TLSEARCH_PROXY_DEADLINE_SECONDS``) and did not come back within the retry window
    (``TLSEARCH_PROXY_RETRY_SECONDS``). The running trial fails and the worker
    stops (exit 1); completed trials are kept, and a worker started once the storage is back
    resumes the study (the interrupted trial is failed and requeued by its stale-trial sweep)."""


def storage_unavailable(exc: BaseException) -> StorageUnavailable | None:
    """The :class:`StorageUnavailable` anywhere in ``exc``'s chain (Optuna may raise another error
    while handling it), else None."""
    seen: BaseException | None = exc
    for _ in range(32):  # a chain is short; a cycle must not hang the error path
        if seen is None:
            return None
        if isinstance(seen, StorageUnavailable):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class ExportError(TlsearchError):
    """The exported model failed a check (onnx.checker, or parity with PyTorch)."""


def format_choices(choices: Iterable[object], limit: int = 30) -> str:
    """``a, b, c`` for an error message, shortened past ``limit`` entries."""
    items = sorted(str(c) for c in choices)
    if not items:
        return "(none)"
    if len(items) > limit:
        return ", ".join(items[:limit]) + f", … ({len(items) - limit} more)"
    return ", ".join(items)


class FailTrial(PluginCallError):
    """Raised by a plugin's ``tlsearch_trial_start``, ``tlsearch_epoch_end`` or ``tlsearch_trial_end``
    (while the trial is ``COMPLETE``) to fail the trial on purpose: it ends ``FAIL`` with
    ``failure_kind`` ``plugin`` and a reason naming the plugin and the message. Any other exception
    from an observer hook is logged and ignored, so that an observer cannot throw trained work away.
    (To prune instead, raise :class:`optuna.TrialPruned` from ``tlsearch_epoch_end``.)"""


def short_repr(value: object, limit: int = 200) -> str:
    """``repr(value)`` cut to at most ``limit`` characters with an ellipsis, for error messages.

    A message echoes what the user gave; a crafted file can give megabytes, so no message may echo
    a value in full. Containers are cut while they are written (``reprlib``), so a huge value costs
    no more than its first few items.
    """
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = shortener.maxlong = limit
    shortener.maxlevel = 4
    text = shortener.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
