"""A real gRPC storage proxy on loopback for the tests: ``tlsearch storage-proxy`` (or Optuna's
plain proxy) in a subprocess, started, killed and restarted on the same port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import grpc

from tlsearch.search.storage import with_available_driver

START_TIMEOUT = 120.0  # the proxy imports tlsearch's search package: slow on a busy machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, timeout: float = START_TIMEOUT) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)


class Proxy:
    """One proxy process over ``database`` on ``port``; ``plain``: Optuna's own
    ``run_grpc_proxy_server`` (no grouped writes), else ``tlsearch storage-proxy``."""

    def __init__(
        self,
        database: str,
        *,
        port: int | None = None,
        plain: bool = False,
        pool: int = 3,
        env: dict[str, str] | None = None,
    ) -> None:
        """``env``: more environment for the proxy process (e.g. its test-only fault hook)."""
        self.database, self.plain, self.pool = database, plain, pool
        self.env = dict(env or {})
        self.port = port or free_port()
        self.url = f"grpc://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[Any] | None = None

    def start(self) -> Proxy:
        if self.plain:
            code = (
                "import sys; from optuna.storages import get_storage, run_grpc_proxy_server; "
                "run_grpc_proxy_server(get_storage(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]))"
            )
            cmd = [sys.executable, "-c", code, with_available_driver(self.database), str(self.port)]
        else:
            cmd = [sys.executable, "-m", "tlsearch", "storage-proxy", "--storage", self.database]
            cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--pool", str(self.pool)]
        self.process = subprocess.Popen(
            cmd,
            env={**os.environ, "OMP_NUM_THREADS": "1", **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        while True:
            try:
                wait_ready(self.port, timeout=1.0)
                return self
            except grpc.FutureTimeoutError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the proxy exited with code {self.process.returncode}") from None
                if time.monotonic() - started > START_TIMEOUT:
                    raise

    def pause(self) -> None:
        """SIGSTOP: a hung proxy (its connections stay open, nothing answers), as in a partition."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: the proxy's host lost, no goodbye to its clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class CallCounter(grpc.UnaryUnaryClientInterceptor):
    """Every RPC attempt a client makes, by method name (what goes on the wire)."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.methods.append(details.method)
        return continuation(details, request)


class ConnectionWatch:
    """The peak number of the database's connections (but its own) while it runs, polled from a
    thread over one connection of its own (one opened per look would count the last look's, still
    closing, as another client)."""

    QUERY = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )

    def __init__(self, database_url: str, *, interval: float = 0.02) -> None:
        from tests.postgres import _connect

        self.conn = _connect(database_url)
        self.interval = interval
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def now(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute(self.QUERY)
            return int(cur.fetchone()[0])

    def _watch(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.conn.close()
