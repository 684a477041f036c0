"""Where a study lives: an Optuna storage built from a URL or a file path.

Two kinds of storage, both Optuna's own (tlsearch adds no scheduler of its own):

* **A database** — ``postgresql://…``, ``mysql://…``, ``sqlite:///…``: Optuna's ``RDBStorage``,
  with Optuna's heartbeats switched on, so a trial whose worker stopped beating is failed by the
  next worker that starts a trial. PostgreSQL (or MySQL) is the way to spread one study over
  several machines.
* **A journal file** — a path ending in ``.journal`` or ``.log`` (or ``journal:PATH``): Optuna's
  ``JournalStorage`` over an append-only log guarded by a file lock, in Optuna's own format, written
  by :class:`~tlsearch.search.journal.DurableJournalFileBackend`: appends are all-or-nothing, a
  torn tail (a full disk) is repaired on open, and a lock left by a dead process is taken over.

* **Optuna's gRPC storage proxy** — ``grpc://host:port``: a ``tlsearch storage-proxy`` (Optuna's
  ``run_grpc_proxy_server``) in front of the database, so that hundreds of workers share the
  proxy's few database connections instead of each holding their own. The proxy has no
  heartbeats; tlsearch's own (as on the journal) fill the gap.

The embedded default of a study folder is the journal file ``<folder>/study.journal``. Why not
SQLite: SQLite serialises writers with a database-wide lock, and several processes writing one
file fail with "database is locked" (32 processes creating one study on a fresh file crashed 27 of
them), while the journal held 640 of 640 trials under the same load. A folder begins with one
process and may get more later (``tlsearch run --workers N``, a ``tlsearch worker`` beside it), so
the default must be safe for several processes from the start, and a study must not change
storage half-way. A folder created by an older tlsearch that holds ``study.db`` keeps its SQLite
storage, for one process only (see :func:`check_concurrency`). The journal has no heartbeats;
:mod:`tlsearch.search.recovery` fills the gap.
"""

from __future__ import annotations

import importlib.util
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial

from tlsearch.errors import ConfigError
from tlsearch.search.journal import DurableJournalFileBackend
from tlsearch.worker_settings import GRACE_PERIOD, HEARTBEAT_INTERVAL

JOURNAL_SUFFIXES = (".journal", ".log")
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "oracle", "mssql")
_CONNECT_ATTEMPTS = 6


def storage_kind(spec: str) -> str:
    """``"journal"``, ``"sqlite"``, ``"rdb"`` (a database server) or ``"grpc"`` (Optuna's storage
    proxy) for a storage URL or path."""
    if spec.startswith("journal:") or spec.endswith(JOURNAL_SUFFIXES) and "://" not in spec:
        return "journal"
    scheme = spec.split("://", 1)[0].split("+", 1)[0].lower() if "://" in spec else ""
    if scheme == "sqlite":
        return "sqlite"
    if scheme == "grpc":
        return "grpc"
    if scheme in RDB_SCHEMES:
        return "rdb"
    raise ConfigError(
        f"storage {spec!r} is not valid; valid forms: postgresql://user@host/db (or another SQLAlchemy URL: "
        "mysql://…, sqlite:///file.db), grpc://host:port (a tlsearch storage-proxy), or a journal file path "
        "ending in .journal or .log"
    )


def make_storage(
    spec: str,
    *,
    heartbeat_interval: int | None = HEARTBEAT_INTERVAL,
    grace_period: int | None = GRACE_PERIOD,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    pool: int | None = None,
) -> BaseStorage:
    """The Optuna storage for ``spec`` (see the module docstring for the accepted forms).

    Databases get Optuna's heartbeats (``heartbeat_interval`` seconds, stale after
    ``grace_period``, then ``on_stale(study, trial)`` runs); ``None`` switches them off. ``pool``:
    a fixed number of database connections (SQLAlchemy's pool, no overflow; the proxy's). Connecting is retried a few times with jitter:
    many workers starting at once on a fresh database race to create Optuna's tables.
    """
    kind = storage_kind(spec)
    if kind == "journal":
        path = Path(spec.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(DurableJournalFileBackend(str(path)))
    if kind == "grpc":
        return grpc_proxy(spec)
    spec = with_available_driver(spec)
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 60}} if kind == "sqlite" else {"pool_pre_ping": True}
    )
    if pool is not None and kind != "sqlite":
        engine_kwargs.update(pool_size=pool, max_overflow=0, pool_timeout=120)
    last: Exception | None = None
    for attempt in range(_CONNECT_ATTEMPTS):
        try:
            with (
                warnings.catch_warnings()
            ):  # heartbeats are "experimental": said on every run, to no one's use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(
                    spec,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=on_stale if heartbeat_interval else None,
                )
            if kind == "sqlite":
                _write_ahead_log(storage)
            return storage
        except ImportError as exc:
            raise ConfigError(f"storage {redact(spec)!r} needs a database driver: {exc}") from exc
        except Exception as exc:  # a table-creation race or a server that is still starting
            last = exc
            time.sleep(0.2 * (2**attempt) * (0.5 + random.random()))
    raise ConfigError(f"cannot open storage {redact(spec)!r}: {type(last).__name__}: {last}") from last


PROXY_READY_TIMEOUT = 12.0


def grpc_address(spec: str) -> tuple[str, int]:
    """``(host, port)`` of a ``grpc://host:port`` storage URL; a malformed one is a ConfigError."""
    rest = spec.split("://", 1)[1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"storage {spec!r} is not a valid gRPC proxy address; the form is grpc://host:port")
    return host.strip("[]"), int(port)


def require_grpc(what: str) -> None:
    """A ConfigError with the install hint when grpcio (Optuna's gRPC proxy needs it) is missing."""
    if importlib.util.find_spec("grpc") is None:
        raise ConfigError(f"{what} needs grpcio: pip install 'tlsearch[grpc]'")


def grpc_proxy(spec: str, *, timeout: float | None = None) -> BaseStorage:
    """A client of Optuna's gRPC storage proxy at ``spec``, once it answers (waited for up to
    ``timeout`` seconds, as a database server is): one that does not is a ConfigError naming it."""
    host, port = grpc_address(spec)
    timeout = PROXY_READY_TIMEOUT if timeout is None else timeout
    try:
        from optuna.storages import GrpcStorageProxy  # noqa: F401 - tlsearch's client extends it
    except ImportError as exc:  # pragma: no cover - optuna 5 has it
        raise ConfigError(f"storage {spec!r} needs Optuna's gRPC proxy: {exc}") from exc
    require_grpc(f"storage {spec!r}")
    from tlsearch.search.grpc_storage import TlsearchGrpcStorage, deadline_seconds, retry_seconds

    # a bad TLSEARCH_PROXY_RETRY_SECONDS or TLSEARCH_PROXY_DEADLINE_SECONDS fails here, before any work
    retry, deadline = retry_seconds(), deadline_seconds()
    proxy = TlsearchGrpcStorage(host=host, port=port, retry=retry, deadline=deadline)
    try:
        proxy.wait_server_ready(timeout=timeout)
    except Exception as exc:
        proxy.close()
        raise ConfigError(
            f"cannot reach the gRPC storage proxy at {spec!r} within {timeout:.0f} s ({type(exc).__name__}); "
            "start one with `tlsearch storage-proxy --storage postgresql://… --port PORT`"
        ) from None
    return proxy


def serve_grpc_proxy(spec: str, *, host: str, port: int, pool: int | None = None) -> None:
    """Run Optuna's gRPC storage proxy over the database ``spec`` until stopped, with tlsearch's
    grouped trial writes beside Optuna's service (:mod:`tlsearch.search.grpc_storage`). The
    database is opened without Optuna's heartbeats (its clients, through the proxy, cannot send
    any; they keep tlsearch's own), behind Optuna's in-process cache, as Optuna's documentation
    asks, on a fixed pool of ``pool`` connections (default ``PROXY_POOL``, no overflow): the
    database sees that many connections at most, however many workers there are."""
    from optuna.storages._cached_storage import _CachedStorage

    from tlsearch.search.grpc_storage import PROXY_POOL, make_proxy_server

    database = make_storage(spec, heartbeat_interval=None, grace_period=None, pool=pool or PROXY_POOL)
    assert isinstance(database, RDBStorage)
    server = make_proxy_server(_CachedStorage(database), host=host, port=port)
    server.start()
    server.wait_for_termination()


def _write_ahead_log(storage: RDBStorage) -> None:
    """SQLite in WAL mode with ``synchronous=NORMAL``: a commit appends to the log without an fsync
    (Optuna commits every parameter and attribute on its own, ~25 per trial, each an fsync of
    several ms otherwise). A crashed process loses nothing committed; only a power cut can drop the
    last commits, never corrupt the file. Readers no longer block the writer either."""

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections opened while Optuna set up its tables get the pragmas too


def with_available_driver(spec: str) -> str:
    """``postgresql://…`` with the PostgreSQL driver that is installed: SQLAlchemy 2.1 means
    psycopg 3 by a bare ``postgresql://``, while many environments have psycopg2 only."""
    for bare in ("postgresql://", "postgres://"):
        if spec.startswith(bare):
            if (
                importlib.util.find_spec("psycopg") is None
                and importlib.util.find_spec("psycopg2") is not None
            ):
                return "postgresql+psycopg2://" + spec[len(bare) :]
            return "postgresql://" + spec[len(bare) :]
    return spec


def redact(spec: str) -> str:
    """``spec`` with any password replaced by ``***`` (for messages and logs)."""
    if "://" not in spec or "@" not in spec:
        return spec
    scheme, rest = spec.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    if ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}@{host}"


def check_concurrency(spec: str, workers: int) -> None:
    """Refuse to run several processes on SQLite, which fails under concurrent writers."""
    if workers > 1 and storage_kind(spec) == "sqlite":
        raise ConfigError(
            f'storage {redact(spec)!r} is SQLite, which is not safe for {workers} processes ("database is '
            'locked"); use --workers 1, a journal file (--storage path/study.journal, the default of a new study '
            "folder) or a database server (--storage postgresql://…)"
        )


def has_heartbeat(storage: BaseStorage) -> bool:
    """Whether Optuna's own heartbeats watch this storage's trials."""
    return is_heartbeat_enabled(storage)
