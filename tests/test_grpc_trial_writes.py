"""Grouped trial writes through the gRPC storage proxy: a real ``tlsearch storage-proxy`` (and
Optuna's plain one) on loopback in front of a real PostgreSQL, read back from the database itself."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

pytest.importorskip("grpc", reason="the gRPC proxy needs grpcio (tlsearch[grpc])")

from tests.grpc_helpers import CallCounter, ConnectionWatch, Proxy  # noqa: E402
from tests.postgres import postgres_url  # noqa: E402, F401 - fixture
from tlsearch.search.grpc_storage import (  # noqa: E402
    COMMIT_METHOD,
    CREATE_METHOD,
    TlsearchGrpcStorage,
    decode_create,
    decode_finish,
    decode_group,
    encode_create,
    encode_finish,
    encode_group,
)
from tlsearch.search.proxy_writes import APPLIED_KEY, CREATED_KEY  # noqa: E402
from tlsearch.search.storage import grpc_address, make_storage  # noqa: E402
from tlsearch.search.trial_writes import commit_trial_writes  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SINGLE_WRITES = {
    "/optuna.StorageService/SetTrialParameter",
    "/optuna.StorageService/SetTrialIntermediateValue",
    "/optuna.StorageService/SetTrialUserAttribute",
    "/optuna.StorageService/SetTrialSystemAttribute",
}


def _client(url: str, counter: CallCounter) -> TlsearchGrpcStorage:
    host, port = grpc_address(url)
    client = TlsearchGrpcStorage(host=host, port=port, retry=5, interceptors=[counter])
    client.wait_server_ready(timeout=30)
    return client


def _group() -> dict:
    return {
        "params": [
            ("lr", 0.01, FloatDistribution(1e-4, 1e-1, log=True)),
            ("head", 1.0, CategoricalDistribution(["linear", "mlp"])),
        ],
        "steps": {0: 0.25, 1: 0.5, 2: float("nan")},
        "attrs": {"choices": {"backbone": "timm", "lr": 0.01}, "history": [{"acc": 0.5}], "seed": 3},
        "system_attrs": {"tpe:relative": [1, 2]},
    }


@pytest.fixture
def tlsearch_proxy(postgres_url: str) -> Iterator[Proxy]:  # noqa: F811
    proxy = Proxy(postgres_url).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _new_trial(client: TlsearchGrpcStorage) -> tuple[int, int]:
    study = optuna.create_study(storage=client, study_name="grouped")
    return study._study_id, client.create_new_trial(study._study_id)


def test_one_commit_call_applies_a_whole_group_atomically(tlsearch_proxy: Proxy, postgres_url: str) -> None:  # noqa: F811
    counter = CallCounter()
    client = _client(tlsearch_proxy.url, counter)
    _, trial_id = _new_trial(client)

    counter.methods.clear()
    commit_trial_writes(client, trial_id, **_group())
    assert counter.methods == [COMMIT_METHOD], "a group must be one call"

    stored = make_storage(postgres_url, heartbeat_interval=None).get_trial(trial_id)  # the database itself
    assert stored.params == {"lr": 0.01, "head": "mlp"}
    assert stored.distributions["lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert stored.intermediate_values[0] == 0.25 and stored.intermediate_values[1] == 0.5
    assert math.isnan(stored.intermediate_values[2])
    assert stored.user_attrs == {
        "choices": {"backbone": "timm", "lr": 0.01},
        "history": [{"acc": 0.5}],
        "seed": 3,
    }
    # beside the sampler's note, the proxy's own record of the writes it applied (resends land once)
    assert {k: v for k, v in stored.system_attrs.items() if k not in (APPLIED_KEY, CREATED_KEY)} == {
        "tpe:relative": [1, 2]
    }
    assert len(stored.system_attrs[APPLIED_KEY]) == 1 and CREATED_KEY in stored.system_attrs

    # All or nothing: a group whose last write is invalid (lr was a float, now an int) leaves no trace.
    with pytest.raises(ValueError, match="different distribution"):
        commit_trial_writes(
            client,
            trial_id,
            steps={3: 0.75},
            attrs={"seed": 99, "late": True},
            params=[("lr", 2, IntDistribution(1, 5))],
        )
    stored = make_storage(postgres_url, heartbeat_interval=None).get_trial(trial_id)
    assert (
        3 not in stored.intermediate_values
        and stored.user_attrs["seed"] == 3
        and "late" not in stored.user_attrs
    )

    # A finished trial refuses writes, as Optuna's own do.
    client.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0])
    with pytest.raises(UpdateFinishedTrialError):
        commit_trial_writes(client, trial_id, attrs={"after": 1})
    client.close()


def test_the_proxy_holds_its_fixed_pool_under_many_concurrent_groups(
    tlsearch_proxy: Proxy,
    postgres_url: str,  # noqa: F811
) -> None:  # noqa: F811
    client = _client(tlsearch_proxy.url, CallCounter())
    study_id, _ = _new_trial(client)
    trial_ids = [client.create_new_trial(study_id) for _ in range(12)]

    def write(trial_id: int) -> None:
        for step in range(10):
            commit_trial_writes(client, trial_id, steps={step: step / 10}, attrs={f"a{step}": step})

    writers = [threading.Thread(target=write, args=(t,)) for t in trial_ids]
    with ConnectionWatch(postgres_url) as watch:
        for w in writers:
            w.start()
        for w in writers:
            w.join()
    peak = watch.peak
    assert 1 <= peak <= tlsearch_proxy.pool, (
        f"{peak} connections from a proxy with a pool of {tlsearch_proxy.pool}"
    )
    stored = make_storage(postgres_url, heartbeat_interval=None).get_all_trials(study_id)
    assert all(
        len(t.intermediate_values) == 10 and len(t.user_attrs) == 10
        for t in stored
        if t._trial_id in trial_ids
    )
    client.close()


def test_against_optunas_plain_proxy_the_group_falls_back_to_one_write_per_call(postgres_url: str) -> None:  # noqa: F811
    proxy = Proxy(postgres_url, plain=True).start()
    try:
        counter = CallCounter()
        client = _client(proxy.url, counter)
        study_id = optuna.create_study(storage=client, study_name="grouped")._study_id
        counter.methods.clear()
        trial_id = client.create_new_trial(study_id)
        # one probe (UNIMPLEMENTED) with the first of tlsearch's methods, then Optuna's call
        assert counter.methods == [CREATE_METHOD, "/optuna.StorageService/CreateNewTrial"]
        counter.methods.clear()
        commit_trial_writes(client, trial_id, **_group())
        # no second probe: each write on its own, 2 parameters, 3 steps, 3 + 1 attributes
        assert len(counter.methods) == 2 + 3 + 3 + 1
        assert set(counter.methods) == SINGLE_WRITES
        stored = make_storage(postgres_url, heartbeat_interval=None).get_trial(trial_id)
        assert stored.params == {"lr": 0.01, "head": "mlp"} and stored.user_attrs["seed"] == 3
        assert stored.system_attrs == {"tpe:relative": [1, 2]} and stored.intermediate_values[1] == 0.5
        assert APPLIED_KEY not in stored.system_attrs, "no request ids through the plain proxy"

        counter.methods.clear()  # the plain proxy is remembered: no second probe
        commit_trial_writes(client, trial_id, attrs={"more": 1})
        assert counter.methods == ["/optuna.StorageService/SetTrialUserAttribute"]
        client.close()
    finally:
        proxy.stop()


def test_the_wire_format_is_json_and_refuses_what_is_not_a_group() -> None:
    group = _group()
    payload = encode_group(7, **group)
    assert payload.startswith(b"{") and b"tpe:relative" in payload  # JSON, never pickle
    decoded = decode_group(payload)
    assert decoded["trial_id"] == 7 and decoded["params"] == group["params"]
    assert decoded["steps"][1] == 0.5 and math.isnan(decoded["steps"][2])
    for bad, message in [
        (b"\x80\x04K\x01.", "not JSON"),  # a pickle
        (b"[1, 2]", "integer trial_id"),
        (b'{"trial_id": 1, "params": [["x"]]}', "malformed parameter"),
        (b'{"trial_id": 1, "attrs": [1]}', "JSON objects"),
    ]:
        with pytest.raises(ValueError, match=message):
            decode_group(bad)


def test_the_creation_and_end_of_a_trial_travel_as_json_with_their_request_id() -> None:
    template = optuna.trial.create_trial(
        state=TrialState.WAITING, params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1e-1)}
    )
    study_id, decoded, request_id = decode_create(encode_create(3, template, request_id="r1"))
    assert (study_id, request_id) == (3, "r1")
    assert decoded is not None and decoded.state == TrialState.WAITING and decoded.params == {"lr": 0.01}
    assert decode_create(encode_create(3, None, request_id="r2")) == (3, None, "r2")
    payload = encode_finish(5, TrialState.COMPLETE, [0.5], request_id="r3")
    assert payload.startswith(b"{")
    assert decode_finish(payload) == (5, TrialState.COMPLETE, [0.5], "r3")
    assert decode_finish(encode_finish(5, TrialState.FAIL, None, request_id="r4"))[2] is None
    for bad, message in [
        (b'{"study_id": 3}', "string request_id"),
        (b'{"study_id": 3, "request_id": "r", "template": "!!"}', "base64 protobuf"),
    ]:
        with pytest.raises(ValueError, match=message):
            decode_create(bad)
    for bad, message in [
        (b'{"trial_id": 5, "state": "DONE", "request_id": "r"}', "state among RUNNING, COMPLETE"),
        (b'{"trial_id": 5, "state": "COMPLETE", "request_id": 7}', "request_id must be a string"),
        (b'{"trial_id": 5, "state": "COMPLETE", "request_id": "r", "values": ["x"]}', "list of numbers"),
    ]:
        with pytest.raises(ValueError, match=message):
            decode_finish(bad)
