"""A storage proxy that goes away: a real ``tlsearch storage-proxy`` on loopback in front of a real
PostgreSQL, killed (SIGKILL) and started again on the same port, or hung (SIGSTOP) and resumed.
Calls retry ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` for the window, then raise
StorageUnavailable; the heartbeat thread outlives the outage; real workers fail clearly (exit 1)
and a worker started once the proxy is back finishes the budget."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

pytest.importorskip("grpc", reason="the gRPC proxy needs grpcio (tlsearch[grpc])")

from tests.grpc_helpers import Proxy  # noqa: E402
from tests.postgres import postgres_url  # noqa: E402, F401 - fixture
from tlsearch.cli import main  # noqa: E402
from tlsearch.errors import StorageUnavailable  # noqa: E402
from tlsearch.search.budget import FINISHED  # noqa: E402
from tlsearch.search.grpc_storage import (  # noqa: E402
    DEADLINE_ENV,
    RETRY_ENV,
    TlsearchGrpcStorage,
    deadline_seconds,
    retry_seconds,
)
from tlsearch.search.recovery import HEARTBEAT_ATTR, RETRY_OF_ATTR, WORKER_ATTR, TrialHeartbeat  # noqa: E402
from tlsearch.search.storage import grpc_address, make_storage  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

# Epochs held at a gate until the test opens it: both workers are then mid-trial when the proxy
# is killed, however slowly either started (a worker still starting when the proxy goes fails its
# start-up probe instead, exit 2: the race CI met at stop 24).
GATED_EPOCHS = textwrap.dedent("""
    import time
    from pathlib import Path
    from tlsearch import hookimpl

    GATE = Path({gate!r})

    @hookimpl
    def tlsearch_epoch_end(trial, epoch, metrics, out_dir):
        deadline = time.monotonic() + 300
        while not GATE.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
""")


def _client(url: str, retry: float, deadline: float | None = None) -> TlsearchGrpcStorage:
    host, port = grpc_address(url)
    client = TlsearchGrpcStorage(host=host, port=port, retry=retry, deadline=deadline)
    client.wait_server_ready(timeout=30)
    return client


def _wait_until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_an_outage_is_retried_then_raised_and_the_heartbeat_outlives_it(postgres_url: str) -> None:  # noqa: F811
    proxy = Proxy(postgres_url).start()
    database = make_storage(postgres_url, heartbeat_interval=None)  # reads the database itself
    try:
        short = _client(proxy.url, retry=1.0)
        patient = _client(proxy.url, retry=60.0)
        study = optuna.create_study(storage=short, study_name="outage")
        trial_id = short.create_new_trial(study._study_id)
        with TrialHeartbeat(study, trial_id, interval=0.2) as beat:
            proxy.kill()
            started = time.monotonic()
            with pytest.raises(StorageUnavailable, match=f"{proxy.url}.*{RETRY_ENV}=1 s"):
                short.set_trial_user_attr(trial_id, "lost", True)
            assert 0.9 <= time.monotonic() - started < 6, "the window is 1 s of retries"
            started = time.monotonic()
            with pytest.raises(StorageUnavailable):  # the window is spent: one try, at once
                short.set_trial_user_attr(trial_id, "lost", True)
            assert time.monotonic() - started < 1.0

            # A call within its window waits through the outage and lands once the proxy is back.
            landed: list[BaseException | None] = []

            def write() -> None:
                try:
                    patient.set_trial_user_attr(trial_id, "through_the_outage", True)
                    landed.append(None)
                except BaseException as exc:  # reported by the assertion below
                    landed.append(exc)

            writer = threading.Thread(target=write)
            writer.start()
            time.sleep(1.0)  # the heartbeat thread meets StorageUnavailable meanwhile, several times
            assert writer.is_alive() and not landed
            proxy.start()
            back = time.time()
            writer.join(timeout=30)
            assert landed == [None]
            _wait_until(
                lambda: database.get_trial(trial_id).user_attrs.get(HEARTBEAT_ATTR, 0) > back,
                timeout=20,
                what="a heartbeat after the proxy came back",
            )
            assert beat._thread is not None and beat._thread.is_alive()
        attrs = database.get_trial(trial_id).user_attrs
        assert attrs["through_the_outage"] is True and "lost" not in attrs
        short.set_trial_user_attr(trial_id, "again", 1)  # the outage is over for the short client too
        assert database.get_trial(trial_id).user_attrs["again"] == 1
    finally:
        proxy.stop()


@pytest.mark.parametrize("bad", ["soon", "-1", "nan", "inf"])
def test_a_bad_retry_window_names_the_variable(bad: str) -> None:
    with pytest.raises(Exception, match=f"{RETRY_ENV}='{bad}'.*number ≥ 0"):
        retry_seconds({RETRY_ENV: bad})
    assert retry_seconds({}) == 60.0 and retry_seconds({RETRY_ENV: "2.5"}) == 2.5


@pytest.mark.parametrize("bad", ["soon", "0", "-1", "nan", "inf"])
def test_a_bad_deadline_names_the_variable(bad: str) -> None:
    with pytest.raises(Exception, match=f"{DEADLINE_ENV}='{bad}'.*number > 0"):
        deadline_seconds({DEADLINE_ENV: bad})
    assert deadline_seconds({}) == 30.0 and deadline_seconds({DEADLINE_ENV: "0.5"}) == 0.5


def test_a_bad_deadline_stops_the_run_before_anything_is_written(write_study, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(DEADLINE_ENV, "soon")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["run", str(write_study()), "--storage", "grpc://127.0.0.1:1", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert f"{DEADLINE_ENV}='soon'" in result.output
    assert not out.exists()


def _in_thread(call) -> tuple[threading.Thread, list[BaseException | None]]:  # type: ignore[no-untyped-def]
    """``call()`` in a thread; the list gets None when it returned, else what it raised (a call
    that hangs leaves the thread alive, which the test asserts on instead of hanging itself)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # reported by the test's assertions
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_hung_proxy_meets_the_deadline_then_raises_and_answers_once_resumed(postgres_url: str) -> None:  # noqa: F811
    proxy = Proxy(postgres_url).start()
    database = make_storage(postgres_url, heartbeat_interval=None)
    try:
        short = _client(proxy.url, retry=1.0, deadline=0.5)
        patient = _client(proxy.url, retry=60.0, deadline=0.5)
        study = optuna.create_study(storage=short, study_name="hung")
        trial_id = short.create_new_trial(study._study_id)
        proxy.pause()  # SIGSTOP: the connection stays open and nothing answers

        started = time.monotonic()
        thread, outcome = _in_thread(lambda: short.set_trial_user_attr(trial_id, "hung", True))
        thread.join(timeout=30)
        assert outcome, "a call to a hung proxy still waits after 30 s: it has no deadline"
        assert isinstance(outcome[0], StorageUnavailable), outcome
        message = str(outcome[0])
        assert proxy.url in message and "DEADLINE_EXCEEDED" in message, message
        assert f"{RETRY_ENV}=1 s" in message and f"{DEADLINE_ENV}=0.5 s" in message, message
        assert 0.9 <= time.monotonic() - started < 10, "1 s of retries of 0.5 s attempts"

        # A call within its window waits through the hang and lands once the proxy resumes.
        thread, outcome = _in_thread(lambda: patient.set_trial_user_attr(trial_id, "through_the_hang", 1))
        thread.join(timeout=2.0)
        assert thread.is_alive() and not outcome, "retried while the proxy is hung"
        proxy.resume()
        thread.join(timeout=30)
        assert outcome == [None]
        assert database.get_trial(trial_id).user_attrs["through_the_hang"] == 1

        # Hung, then killed (the host lost for good): the client ends with StorageUnavailable too.
        proxy.pause()
        thread, outcome = _in_thread(lambda: short.set_trial_user_attr(trial_id, "gone", True))
        thread.join(timeout=0.3)
        proxy.kill()
        thread.join(timeout=30)
        assert outcome and isinstance(outcome[0], StorageUnavailable), outcome
        assert proxy.url in str(outcome[0])
    finally:
        proxy.resume()
        proxy.stop()


def test_workers_fail_clearly_when_the_proxy_dies_and_the_study_completes_once_it_is_back(
    write_study,
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    budget = 2
    gate = tmp_path / "gate"
    plugin = tmp_path / "gated_epochs.py"
    plugin.write_text(GATED_EPOCHS.format(gate=str(gate)))
    study = write_study(
        plugins=[str(plugin)],
        space={"freezing": ["linear_probe"]},
        training={"epochs": 2},
        search={"n_trials": budget, "pruner": "none"},
    )
    name = yaml.safe_load(study.read_text())["name"]
    out = tmp_path / "run"
    proxy = Proxy(postgres_url).start()
    database = make_storage(postgres_url, heartbeat_interval=None)
    try:
        created = CliRunner().invoke(
            main, ["run", str(study), "--storage", proxy.url, "--out", str(out), "--workers", "0"]
        )
        assert created.exit_code == 0, created.output
        study_id = database.get_study_id_from_name(name)
        env = {**os.environ, "OMP_NUM_THREADS": "1", RETRY_ENV: "3"}
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tlsearch",
                    "worker",
                    str(study),
                    "--storage",
                    proxy.url,
                    "--out",
                    str(out),
                ],
                env={**env, "TLSEARCH_WORKER_RANK": str(rank)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for rank in range(2)
        ]

        def both_training() -> bool:
            trials = database.get_all_trials(study_id, states=(TrialState.RUNNING,))
            return sum(bool(t.user_attrs.get("choices")) for t in trials) == budget

        _wait_until(both_training, timeout=240, what="both workers' trials to train")
        proxy.kill()  # mid-study: each worker's trial waits at the gate
        gate.touch()
        for worker in workers:
            output, _ = worker.communicate(timeout=120)
            assert worker.returncode == 1, output
            assert f"the storage proxy at {proxy.url} did not answer" in output, output
            assert f"{RETRY_ENV}=3 s" in output and "Traceback" not in output, output
        stuck = database.get_all_trials(study_id, states=(TrialState.RUNNING,))
        assert len(stuck) == budget, "each worker died with its trial running"

        proxy.start()  # the same address: a new worker resumes the study
        monkeypatch.setenv(RETRY_ENV, "30")
        resumed = CliRunner().invoke(main, ["worker", str(study), "--storage", proxy.url, "--out", str(out)])
        assert resumed.exit_code == 0, resumed.output

        trials = database.get_all_trials(study_id)
        assert sum(t.state in FINISHED for t in trials) == budget, [(t.number, t.state) for t in trials]
        assert not [t for t in trials if t.state == TrialState.RUNNING]
        by_number = {t.number: t for t in trials}
        for lost in stuck:  # failed with the reason, and their parameters retried
            after = by_number[lost.number]
            assert after.state == TrialState.FAIL and "worker died" in after.user_attrs["failure"]
            assert str(lost.user_attrs[WORKER_ATTR]["pid"]) in after.user_attrs["failure"]
            retries = [t for t in trials if t.user_attrs.get(RETRY_OF_ATTR) == lost.number]
            assert len(retries) == 1
            assert retries[0].params == lost.params
    finally:
        proxy.stop()
