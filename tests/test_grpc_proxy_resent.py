"""A write the proxy applied but whose answer was lost (or that was still running when the client
gave up on it) is resent by the client and lands once.

"Applied, answer lost" is made for real: a real ``tlsearch storage-proxy`` (in front of a real
PostgreSQL) started with its test-only hook kills itself (SIGKILL) right after it committed a
given method's write, before replying; the client retries ``UNAVAILABLE`` until the proxy is
started again on the same port, and resends."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

pytest.importorskip("grpc", reason="the gRPC proxy needs grpcio (tlsearch[grpc])")

from tests.grpc_helpers import CallCounter, Proxy  # noqa: E402
from tests.postgres import _connect, postgres_url  # noqa: E402, F401 - fixture
from tlsearch.search.budget import FINISHED  # noqa: E402
from tlsearch.search.grpc_storage import DIE_AFTER_ENV, RETRY_ENV, TlsearchGrpcStorage  # noqa: E402
from tlsearch.search.proxy_writes import APPLIED_KEY, CREATED_KEY  # noqa: E402
from tlsearch.search.storage import grpc_address, make_storage  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _client(url: str) -> TlsearchGrpcStorage:
    host, port = grpc_address(url)
    client = TlsearchGrpcStorage(host=host, port=port, retry=120.0, deadline=30.0)
    client.wait_server_ready(timeout=30)
    return client


def _through_a_lost_answer(proxy: Proxy, call):  # type: ignore[no-untyped-def]
    """``call()`` while the proxy dies after applying it; the proxy is then started again (without
    the hook) and the call's outcome returned (or raised)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(("returned", call()))
        except BaseException as exc:  # re-raised below, in the test's thread
            outcome.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert proxy.process is not None
    assert proxy.process.wait(timeout=120) == -9, "the proxy's hook kills it after the commit"
    proxy.env = {}
    proxy.start()
    thread.join(timeout=120)
    assert outcome, "the resent call did not end once the proxy was back"
    kind, value = outcome[0]  # type: ignore[misc]
    if kind == "raised":
        raise value  # type: ignore[misc]
    return value


@pytest.mark.parametrize("method", ["Commit", "Finish", "CreateTrial"])
def test_a_write_applied_whose_answer_was_lost_lands_once(method: str, postgres_url: str) -> None:  # noqa: F811
    database = make_storage(postgres_url, heartbeat_interval=None)
    proxy = Proxy(postgres_url).start()
    try:
        client = _client(proxy.url)
        study = optuna.create_study(storage=client, study_name=f"resent-{method}")
        trial_id = client.create_new_trial(study._study_id)
        proxy.stop()
        proxy.env = {DIE_AFTER_ENV: method}
        proxy.start()

        if method == "Commit":  # a parameter written twice would break its unique key
            x = FloatDistribution(0.0, 1.0)
            grouped = _through_a_lost_answer(
                proxy,
                lambda: client.commit_trial_writes(
                    trial_id, params=[("x", 0.25, x)], steps={0: 0.5}, attrs={"epoch": 1}, system_attrs={}
                ),
            )
            assert grouped is True
            trial = database.get_trial(trial_id)
            assert trial.params == {"x": 0.25} and trial.intermediate_values == {0: 0.5}
            assert trial.user_attrs == {"epoch": 1} and trial.state == TrialState.RUNNING
            assert len(trial.system_attrs[APPLIED_KEY]) == 1
        elif method == "Finish":  # a trial finished twice raises "already finished"
            updated = _through_a_lost_answer(
                proxy, lambda: client.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.75])
            )
            assert updated is True
            trial = database.get_trial(trial_id)
            assert trial.state == TrialState.COMPLETE and trial.values == [0.75]
        else:  # a trial created twice is one more than the budget counts on
            created = _through_a_lost_answer(proxy, lambda: client.create_new_trial(study._study_id))
            trials = database.get_all_trials(study._study_id)
            assert [t._trial_id for t in trials] == [trial_id, created], "one new trial, the one returned"
            assert trials[1].number == 1 and CREATED_KEY in trials[1].system_attrs
        client.close()
    finally:
        proxy.stop()


@pytest.mark.parametrize("write", ["create", "commit", "finish"])
def test_copies_resent_while_the_first_is_still_running_land_once(write: str, postgres_url: str) -> None:  # noqa: F811
    """A slow proxy, for real: the test holds the row the write locks (the study's for a creation,
    the trial's for its end), so the proxy's handler waits on the database; the client's deadline
    passes and it resends, copy after copy, each one a handler waiting too. Released, the copies
    run one after another, and all but the first see its request id."""
    database = make_storage(postgres_url, heartbeat_interval=None)
    proxy = Proxy(postgres_url).start()
    holder = _connect(postgres_url)
    try:
        counter = CallCounter()
        host, port = grpc_address(proxy.url)
        client = TlsearchGrpcStorage(host=host, port=port, retry=120.0, deadline=0.3, interceptors=[counter])
        client.wait_server_ready(timeout=30)
        study = optuna.create_study(storage=client, study_name=f"slow-{write}")
        trial_id = client.create_new_trial(study._study_id)

        holder.autocommit = False
        with holder.cursor() as cur:
            if write == "create":
                cur.execute("SELECT 1 FROM studies WHERE study_id = %s FOR UPDATE", (study._study_id,))
            else:
                cur.execute("SELECT 1 FROM trials WHERE trial_id = %s FOR UPDATE", (trial_id,))
        counter.methods.clear()
        outcome: list[object] = []

        def call() -> None:
            try:
                if write == "create":
                    outcome.append(client.create_new_trial(study._study_id))
                elif write == "commit":
                    x = FloatDistribution(0.0, 1.0)
                    outcome.append(
                        client.commit_trial_writes(
                            trial_id, params=[("x", 0.25, x)], steps={}, attrs={"a": 1}, system_attrs={}
                        )
                    )
                else:
                    outcome.append(client.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5]))
            except BaseException as exc:  # asserted on below
                outcome.append(exc)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while len(counter.methods) < 4:  # the first copy and three resends, all waiting on the lock
            assert time.monotonic() < deadline, "the client did not resend"
            time.sleep(0.05)
        holder.commit()  # the lock is released: the copies run
        thread.join(timeout=120)
        assert len(outcome) == 1, "the resent call did not land"
        assert not isinstance(outcome[0], BaseException), outcome[0]
        trials = database.get_all_trials(study._study_id)
        if write == "create":
            assert [t._trial_id for t in trials] == [trial_id, outcome[0]], "one new trial"
        elif write == "commit":
            assert outcome == [True] and trials[0].params == {"x": 0.25} and trials[0].user_attrs == {"a": 1}
        else:
            assert outcome == [True] and trials[0].state == TrialState.COMPLETE and trials[0].values == [0.5]
        client.close()
    finally:
        holder.close()
        proxy.stop()


def test_the_ends_of_trials_are_exact_through_optunas_plain_proxy(postgres_url: str) -> None:  # noqa: F811
    """Through Optuna's plain proxy (no request ids) a resent end whose first copy was applied is
    taken as done when the trial is in exactly that state; any other end of a finished trial raises."""
    database = make_storage(postgres_url, heartbeat_interval=None)
    proxy = Proxy(postgres_url, plain=True).start()
    try:
        client = _client(proxy.url)
        study = optuna.create_study(storage=client, study_name="plain-ends")
        trial_id = client.create_new_trial(study._study_id)
        assert client.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5]) is True
        assert client._grouped is False, "the plain proxy answered UNIMPLEMENTED: Optuna's calls"
        assert client.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5]) is True  # as resent
        with pytest.raises(UpdateFinishedTrialError):
            client.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.25])
        with pytest.raises(UpdateFinishedTrialError):
            client.set_trial_state_values(trial_id, TrialState.FAIL)
        trial = database.get_trial(trial_id)
        assert trial.state == TrialState.COMPLETE and trial.values == [0.5]
        client.close()
    finally:
        proxy.stop()


def test_a_study_whose_trial_ends_are_resent_finishes_exactly_its_budget(
    write_study,
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A real worker: the proxy dies after committing the first trial's end, before answering; the
    worker resends it to the restarted proxy and the study finishes exactly its budget, no trial
    failed and none created twice."""
    budget = 2
    study = write_study(training={"epochs": 1}, search={"n_trials": budget, "pruner": "none"})
    name = yaml.safe_load(study.read_text())["name"]
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", RETRY_ENV: "120"}
    proxy = Proxy(postgres_url).start()
    database = make_storage(postgres_url, heartbeat_interval=None)
    try:
        cli = [sys.executable, "-m", "tlsearch"]
        created = subprocess.run(
            [*cli, "run", str(study), "--storage", proxy.url, "--out", str(out), "--workers", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert created.returncode == 0, created.stderr
        proxy.stop()
        proxy.env = {DIE_AFTER_ENV: "Finish"}
        proxy.start()
        worker = subprocess.Popen(
            [*cli, "worker", str(study), "--storage", proxy.url, "--out", str(out)],
            env={**env, "TLSEARCH_WORKER_RANK": "0"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proxy.process is not None
        assert proxy.process.wait(timeout=300) == -9, "the proxy dies after the first trial's end"
        proxy.env = {}
        proxy.start()
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output

        trials = database.get_all_trials(database.get_study_id_from_name(name))
        assert [t.state for t in trials] == [TrialState.COMPLETE] * budget, output
        assert sum(t.state in FINISHED for t in trials) == budget
    finally:
        proxy.stop()
