"""tlsearch's side of Optuna's gRPC storage proxy: grouped trial writes and outages.

Two additions to Optuna's proxy, each on its own side of the wire:

* **Grouped trial writes.** :mod:`tlsearch.search.trial_writes` commits a trial's staged writes
  (its parameters, intermediate values, user and system attributes) in one transaction on a
  database. Through Optuna's plain proxy each of those writes is one RPC and one database commit
  (~30 per trial). The proxy that ``tlsearch storage-proxy`` runs therefore serves one more
  method beside Optuna's service, ``/tlsearch.TrialWrites/Commit`` (a generic gRPC handler, so no
  generated code): the group travels as one JSON document (never pickle) and is applied by the
  same :func:`~tlsearch.search.trial_writes.commit_trial_writes` as on a database, in one
  transaction and one commit. A client that meets a plain Optuna proxy (``UNIMPLEMENTED``) falls
  back to one write per call, once and for all. Creating a trial (``CreateTrial``) and ending it
  (``Finish``) are tlsearch methods too, for the next point.
* **Resent writes applied once.** Each of those calls carries a request id, recorded by the proxy
  in the write's own transaction, so that a call resent because its answer was lost is not
  applied twice (:mod:`tlsearch.search.proxy_writes`). Through Optuna's plain proxy only some of
  this holds: see :meth:`TlsearchGrpcStorage.set_trial_state_values`.
* **Outages.** A proxy that goes away (restarted, its host lost) makes every call fail with
  ``UNAVAILABLE``; a proxy that hangs (SIGSTOPped, a network partition: the connection stays open,
  no answer comes) would make a call wait forever, so every call has a deadline,
  ``TLSEARCH_PROXY_DEADLINE_SECONDS`` (default 30), and ``DEADLINE_EXCEEDED`` counts as
  ``UNAVAILABLE``. The client (:class:`TlsearchGrpcStorage`) retries such calls with jittered
  back-off for ``TLSEARCH_PROXY_RETRY_SECONDS`` (default 60) counted from the start of the outage
  (for a hung proxy: from the start of the first call it did not answer), then raises
  :class:`~tlsearch.errors.StorageUnavailable`. The window is shared by every call of
  the process: once it is spent, each call tries once and raises at once, until one succeeds, so a
  worker stops promptly and its heartbeat thread keeps trying without waiting a window per beat.

The proxy's database pool is small and fixed (:data:`PROXY_POOL` connections, no overflow): that is
the point of the proxy, however many workers connect.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, GrpcStorageProxy
from optuna.storages._grpc.auto_generated import api_pb2_grpc
from optuna.trial import FrozenTrial, TrialState

from tlsearch.errors import StorageUnavailable
from tlsearch.search.grpc_wire import (  # noqa: F401 - the wire format, re-exported
    decode_create,
    decode_finish,
    decode_group,
    encode_create,
    encode_finish,
    encode_group,
)

log = logging.getLogger("tlsearch")

SERVICE = "tlsearch.TrialWrites"
COMMIT_METHOD = f"/{SERVICE}/Commit"
CREATE_METHOD = f"/{SERVICE}/CreateTrial"
FINISH_METHOD = f"/{SERVICE}/Finish"
#: test-only: the proxy's methods (comma-separated) after whose commit it kills itself before
#: answering, to test "applied, but the answer lost" for real; never set it otherwise
DIE_AFTER_ENV = "TLSEARCH_TEST_PROXY_DIES_AFTER"
RETRY_ENV = "TLSEARCH_PROXY_RETRY_SECONDS"
RETRY_SECONDS = 60.0
DEADLINE_ENV = "TLSEARCH_PROXY_DEADLINE_SECONDS"
#: the longest one call waits for its answer: far above any call's time on a loaded proxy (a read
#: of every trial of a large study takes well under a second), far below "forever"
DEADLINE_SECONDS = 30.0
#: the status codes that mean "no answer": retried within the window
_NO_ANSWER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
#: the proxy's database connections (SQLAlchemy pool_size, no overflow): peak ≤ this, whatever N
PROXY_POOL = 3
#: the proxy's RPC threads: more than the pool, so that reads queue on the pool, not on gRPC
PROXY_THREADS = 16
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 2.0
#: the channel reconnects at least this often while the proxy is away (gRPC's default grows to 120 s,
#: which would leave a worker failing for up to two minutes after the proxy is back)
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def retry_seconds(environ: Mapping[str, str] | None = None) -> float:
    """``TLSEARCH_PROXY_RETRY_SECONDS`` (default 60): how long an outage is retried. A value that is
    not a number ≥ 0 is a ConfigError naming it."""
    return _seconds(environ, RETRY_ENV, RETRY_SECONDS, "to retry an outage (a number ≥ 0)", zero=True)


def deadline_seconds(environ: Mapping[str, str] | None = None) -> float:
    """``TLSEARCH_PROXY_DEADLINE_SECONDS`` (default 30): how long one call waits for the proxy's
    answer. A value that is not a number > 0 is a ConfigError naming it."""
    return _seconds(
        environ, DEADLINE_ENV, DEADLINE_SECONDS, "one call waits for an answer (a number > 0)", zero=False
    )


def _seconds(environ: Mapping[str, str] | None, name: str, default: float, what: str, *, zero: bool) -> float:
    from tlsearch.errors import ConfigError

    raw = (os.environ if environ is None else environ).get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 if zero else value > 0) or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} is not valid; give the seconds {what}")
    return value


# -- the server ------------------------------------------------------------------------------------


def trial_writes_handler(storage: BaseStorage) -> grpc.GenericRpcHandler:
    """tlsearch's methods over ``storage`` (the proxy's database): ``Commit`` (one group, one
    transaction), ``CreateTrial`` and ``Finish``, each applied once per request id
    (:mod:`tlsearch.search.proxy_writes`). Errors map to the status codes Optuna's own service
    uses, so that the client raises what Optuna's writes raise."""
    from tlsearch.search.proxy_writes import create_once, finish_once
    from tlsearch.search.trial_writes import commit_trial_writes

    dies_after = {m.strip() for m in os.environ.get(DIE_AFTER_ENV, "").split(",") if m.strip()}

    def applied(method: str) -> None:
        if method in dies_after:  # test-only: committed, and the answer never leaves
            os.kill(os.getpid(), signal.SIGKILL)

    def answering(
        method: str, apply: Callable[[bytes], Any]
    ) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def handle(payload: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                answer = apply(payload)
            except UpdateFinishedTrialError as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            except KeyError as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no such trial or study {exc}")
            except ValueError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            applied(method)
            return json.dumps(answer).encode()

        return handle

    def commit(payload: bytes) -> dict[str, Any]:
        group = decode_group(payload)
        commit_trial_writes(storage, group.pop("trial_id"), **group)
        return {}

    def create(payload: bytes) -> dict[str, Any]:
        study_id, template, request_id = decode_create(payload)
        return {"trial_id": create_once(storage, study_id, template, request_id=request_id)}

    def finish(payload: bytes) -> dict[str, Any]:
        trial_id, state, values, request_id = decode_finish(payload)
        return {"updated": finish_once(storage, trial_id, state, values, request_id=request_id)}

    methods = {"Commit": commit, "CreateTrial": create, "Finish": finish}
    handlers = {  # bytes in, bytes out
        name: grpc.unary_unary_rpc_method_handler(answering(name, apply)) for name, apply in methods.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def make_proxy_server(storage: BaseStorage, *, host: str, port: int) -> grpc.Server:
    """Optuna's proxy server over ``storage`` with tlsearch's grouped-writes method beside it."""
    from concurrent.futures import ThreadPoolExecutor

    from optuna.storages._grpc.server import make_server

    server = make_server(storage, host, port, ThreadPoolExecutor(max_workers=PROXY_THREADS))
    server.add_generic_rpc_handlers((trial_writes_handler(storage),))
    return server


# -- the client ------------------------------------------------------------------------------------


class _Outage:
    """When the proxy stopped answering (shared by every call of one client), and the retry loop."""

    def __init__(self, where: str, seconds: float, deadline: float) -> None:
        self.where = where
        self.seconds = seconds
        self.deadline = deadline
        self.since: float | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # the client pickles (Optuna's does): not the lock
        return {"where": self.where, "seconds": self.seconds, "deadline": self.deadline}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.where, self.seconds, self.since = state["where"], state["seconds"], None
        self.deadline = state.get("deadline", DEADLINE_SECONDS)
        self._lock = threading.Lock()

    def call(self, attempt: Callable[[float], Any]) -> Any:
        """``attempt(deadline)`` (a gRPC outcome) until it has an answer (any code but UNAVAILABLE
        and DEADLINE_EXCEEDED) or the window is spent."""
        delay = _BACKOFF_FIRST
        while True:
            started = time.monotonic()
            outcome = attempt(self.deadline)
            code = outcome.code()
            if code not in _NO_ANSWER:
                if self.since is not None:
                    with self._lock:
                        if self.since is not None:
                            log.warning("the storage proxy at %s answers again", self.where)
                        self.since = None
                return outcome
            now = time.monotonic()
            # a call that waited out its deadline met the outage when it was sent
            began = started if code == grpc.StatusCode.DEADLINE_EXCEEDED else now
            with self._lock:
                if self.since is None or began < self.since:
                    if self.since is None:
                        log.warning(
                            "the storage proxy at %s does not answer (%s); retrying for %.0f s",
                            self.where,
                            code.name,
                            self.seconds,
                        )
                    self.since = began
                since = self.since
            left = since + self.seconds - now
            if left <= 0:
                raise StorageUnavailable(
                    f"the storage proxy at {self.where} did not answer for {now - since:.0f} s "
                    f"({code.name}: {outcome.details()}); {RETRY_ENV}={self.seconds:g} s of retries are spent "
                    f"(each call waits {DEADLINE_ENV}={self.deadline:g} s for an answer). "
                    "Completed trials are kept: start the proxy again (`tlsearch storage-proxy`) and "
                    "rerun a worker to resume the study"
                )
            time.sleep(min(left, delay * (0.5 + random.random())))
            delay = min(delay * 2, _BACKOFF_MAX)


class _WithDeadline(grpc.ClientCallDetails):
    """``details`` with ``timeout`` (gRPC's deadline, in seconds) where it had none."""

    def __init__(self, details: Any, timeout: float) -> None:
        self.method = details.method
        self.timeout = details.timeout if details.timeout is not None else timeout
        self.metadata = details.metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _RetryInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, outage: _Outage) -> None:
        self.outage = outage

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self.outage.call(lambda deadline: continuation(_WithDeadline(details, deadline), request))


class TlsearchGrpcStorage(GrpcStorageProxy):
    """Optuna's proxy client, plus grouped trial writes (:meth:`commit_trial_writes`) and retries of
    an outage (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        retry: float | None = None,
        deadline: float | None = None,
        interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = (),
    ) -> None:
        """``retry``: seconds an outage is retried (default ``TLSEARCH_PROXY_RETRY_SECONDS``);
        ``deadline``: seconds one call waits for an answer (default ``TLSEARCH_PROXY_DEADLINE_SECONDS``);
        ``interceptors``: more gRPC client interceptors, each seeing every attempt (to count calls)."""
        where = f"grpc://{host}:{port}"
        self._outage = _Outage(
            where,
            retry_seconds() if retry is None else retry,
            deadline_seconds() if deadline is None else deadline,
        )
        self._interceptors = tuple(interceptors)
        self._grouped = True
        super().__init__(host=host, port=port)

    def _setup(self) -> None:
        from optuna.storages._grpc.client import GrpcClientCache

        self._raw_channel = grpc.insecure_channel(f"{self._host}:{self._port}", options=_CHANNEL_OPTIONS)
        self._channel = grpc.intercept_channel(
            self._raw_channel, _RetryInterceptor(self._outage), *self._interceptors
        )
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)
        self._commit = self._channel.unary_unary(COMMIT_METHOD)
        self._create = self._channel.unary_unary(CREATE_METHOD)
        self._finish = self._channel.unary_unary(FINISH_METHOD)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        for key in ("_raw_channel", "_commit", "_create", "_finish"):
            state.pop(key, None)
        return state

    def close(self) -> None:
        self._channel.close()
        self._raw_channel.close()

    @property
    def retry_seconds(self) -> float:
        return self._outage.seconds

    @property
    def deadline_seconds(self) -> float:
        return self._outage.deadline

    def _plain(self, exc: grpc.RpcError) -> bool:
        """Whether ``exc`` says the proxy is Optuna's plain one (no tlsearch methods): then every
        later call takes Optuna's methods."""
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            return False
        if self._grouped:
            log.info("the storage proxy has no grouped writes (Optuna's own proxy): one write per call")
        self._grouped = False
        return True

    @staticmethod
    def _raise(exc: grpc.RpcError) -> None:
        code = exc.code()
        if code == grpc.StatusCode.NOT_FOUND:
            raise KeyError(exc.details()) from exc
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            raise UpdateFinishedTrialError(exc.details()) from exc
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise ValueError(exc.details()) from exc
        raise exc

    def commit_trial_writes(
        self,
        trial_id: int,
        *,
        params: list[tuple[str, float, BaseDistribution]],
        steps: dict[int, float],
        attrs: dict[str, Any],
        system_attrs: dict[str, Any],
    ) -> bool:
        """Apply the group in one call and one commit on the proxy, once however often the call is
        resent; False (nothing written) when the proxy is Optuna's plain one, which has no such
        method: write one by one then."""
        if not self._grouped:
            return False
        payload = encode_group(
            trial_id,
            params=params,
            steps=steps,
            attrs=attrs,
            system_attrs=system_attrs,
            request_id=uuid.uuid4().hex,
        )
        try:
            self._commit(payload)
        except grpc.RpcError as exc:
            if self._plain(exc):
                return False
            self._raise(exc)
        return True

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        """A new trial, created once however often the call is resent (through Optuna's plain
        proxy, Optuna's call: a resent one can leave one RUNNING trial more, which the stale-trial
        sweep fails)."""
        if self._grouped:
            try:
                answer = self._create(encode_create(study_id, template_trial, request_id=uuid.uuid4().hex))
                return int(json.loads(answer)["trial_id"])
            except grpc.RpcError as exc:
                if not self._plain(exc):
                    self._raise(exc)
        return super().create_new_trial(study_id, template_trial)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """End (or start) a trial, once however often the call is resent.

        Through Optuna's plain proxy, a resent end whose first copy was applied raises
        UpdateFinishedTrialError there: it is taken as done when the trial already has exactly
        this state and these values (what the first copy wrote). A resent start of a waiting
        trial answers False there (as if another worker took it first): that trial stays RUNNING
        until the stale-trial sweep fails and requeues it."""
        if self._grouped:
            try:
                answer = self._finish(encode_finish(trial_id, state, values, request_id=uuid.uuid4().hex))
                return bool(json.loads(answer)["updated"])
            except grpc.RpcError as exc:
                if not self._plain(exc):
                    self._raise(exc)
        try:
            return super().set_trial_state_values(trial_id, state, values)
        except UpdateFinishedTrialError:
            trial = self.get_trial(trial_id)
            wanted = None if values is None else [float(v) for v in values]
            if trial.state == state and (wanted is None or trial.values == wanted):
                return True
            raise
