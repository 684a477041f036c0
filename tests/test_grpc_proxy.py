"""Workers through Optuna's gRPC storage proxy: a real ``tlsearch storage-proxy`` on loopback in
front of a real PostgreSQL; the budget holds exactly and the database sees only the proxy's
connections, however many workers there are."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner

from tests.postgres import _connect, postgres_url  # noqa: F401 - fixture
from tlsearch.cli import main
from tlsearch.search import storage as storage_module
from tlsearch.search.budget import FINISHED
from tlsearch.search.storage import grpc_address, make_storage, storage_kind

pytest.importorskip("grpc", reason="the gRPC proxy needs grpcio (tlsearch[grpc])")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tlsearch", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[str]:  # noqa: F811
    port = _free_port()
    server = subprocess.Popen(
        _cli("storage-proxy", "--storage", postgres_url, "--host", "127.0.0.1", "--port", str(port)),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"grpc://127.0.0.1:{port}"
    try:
        storage_module.grpc_proxy(
            url, timeout=120
        )  # waits until it answers (it starts slowly on a busy machine)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _connections(database_url: str) -> int:
    conn = _connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_workers_through_the_proxy_finish_exactly_the_budget_on_few_connections(
    write_study,
    proxy: str,
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    budget, workers = 3, 3
    study = write_study(training={"epochs": 1}, search={"n_trials": budget, "warm_start": True})
    out = tmp_path / "run"
    created = subprocess.run(
        _cli("run", str(study), "--storage", proxy, "--out", str(out), "--workers", "0"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert created.returncode == 0, created.stderr
    procs = [
        subprocess.Popen(
            _cli("worker", str(study), "--storage", proxy, "--out", str(out)),
            env={**_env(), "TLSEARCH_WORKER_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(workers)
    ]
    peak = 0
    while any(p.poll() is None for p in procs):
        peak = max(peak, _connections(postgres_url))
        time.sleep(0.2)
    for p in procs:
        assert p.returncode == 0, p.stdout.read() if p.stdout else ""
    assert 1 <= peak <= 4, f"{peak} database connections with {workers} workers behind the proxy"

    name = yaml.safe_load(study.read_text())["name"]
    trials = optuna.load_study(study_name=name, storage=make_storage(postgres_url)).trials
    assert sum(t.state in FINISHED for t in trials) == budget, [t.state for t in trials]
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]


def test_an_unreachable_proxy_stops_the_run_before_anything_is_written(write_study, tmp_path, monkeypatch):
    monkeypatch.setattr(storage_module, "PROXY_READY_TIMEOUT", 0.5)
    url = f"grpc://127.0.0.1:{_free_port()}"
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(write_study()), "--storage", url, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert url in result.output and "tlsearch storage-proxy" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "bad", ["grpc://", "grpc://host", "grpc://host:port", "grpc://host:0", "grpc://:13000"]
)
def test_a_malformed_proxy_address_names_the_form(bad: str) -> None:
    assert storage_kind(bad) == "grpc"
    with pytest.raises(Exception, match="grpc://host:port"):
        grpc_address(bad)


def test_proxy_address_parses() -> None:
    assert grpc_address("grpc://10.0.0.5:13000") == ("10.0.0.5", 13000)
    assert grpc_address("grpc://[::1]:50051/") == ("::1", 50051)
