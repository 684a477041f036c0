"""The wire format of tlsearch's proxy methods (:mod:`tlsearch.search.grpc_storage`): JSON
documents, never pickle; a template trial as Optuna's own protobuf message. Each decoder refuses
what is malformed with a ValueError saying what is wrong (the proxy answers INVALID_ARGUMENT)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.trial import FrozenTrial, TrialState


def encode_group(
    trial_id: int,
    *,
    params: list[tuple[str, float, BaseDistribution]],
    steps: dict[int, float],
    attrs: dict[str, Any],
    system_attrs: dict[str, Any],
    request_id: str | None = None,
) -> bytes:
    """One JSON document for a group of writes (distributions as Optuna's own JSON; NaN and
    infinities as Python's json writes them, both ends being Python)."""
    group = {
        "trial_id": int(trial_id),
        "request_id": request_id,
        "params": [[name, float(value), distribution_to_json(d)] for name, value, d in params],
        "steps": [[int(step), float(value)] for step, value in steps.items()],
        "attrs": attrs,
        "system_attrs": system_attrs,
    }
    return json.dumps(group).encode()


def decode_group(payload: bytes) -> dict[str, Any]:
    """The arguments of :func:`~tlsearch.search.trial_writes.commit_trial_writes` from
    :func:`encode_group`'s document; anything else is a ValueError saying what is wrong."""
    try:
        group = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"the group of writes is not JSON: {exc}") from None
    if not isinstance(group, dict) or not isinstance(group.get("trial_id"), int):
        raise ValueError("the group of writes must be a JSON object with an integer trial_id")
    try:
        params = [(str(n), float(v), json_to_distribution(d)) for n, v, d in group.get("params", [])]
        steps = {int(s): float(v) for s, v in group.get("steps", [])}
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"the group of writes has a malformed parameter or step: {exc}") from None
    attrs, system_attrs = group.get("attrs", {}), group.get("system_attrs", {})
    if not isinstance(attrs, dict) or not isinstance(system_attrs, dict):
        raise ValueError("attrs and system_attrs of the group of writes must be JSON objects")
    return {
        "trial_id": group["trial_id"],
        "request_id": _request_id(group),
        "params": params,
        "steps": steps,
        "attrs": attrs,
        "system_attrs": system_attrs,
    }


def _request_id(document: dict[str, Any]) -> str | None:
    request_id = document.get("request_id")
    if request_id is not None and not isinstance(request_id, str):
        raise ValueError(f"request_id must be a string, not {request_id!r}")
    return request_id


def encode_create(study_id: int, template: FrozenTrial | None, *, request_id: str) -> bytes:
    """A trial creation: the template as Optuna's own protobuf message (base64), as its service sends it."""
    from optuna.storages._grpc.servicer import _to_proto_trial

    proto = None if template is None else base64.b64encode(_to_proto_trial(template).SerializeToString())
    return json.dumps(
        {"study_id": int(study_id), "request_id": request_id, "template": proto and proto.decode()}
    ).encode()


def decode_create(payload: bytes) -> tuple[int, FrozenTrial | None, str]:
    from optuna.storages._grpc.servicer import _from_proto_trial

    document = _json_object(payload, "the trial creation")
    study_id, request_id, template = document.get("study_id"), _request_id(document), document.get("template")
    if not isinstance(study_id, int) or request_id is None:
        raise ValueError("a trial creation needs an integer study_id and a string request_id")
    if template is None:
        return study_id, None, request_id
    try:
        proto = api_pb2.Trial.FromString(base64.b64decode(template, validate=True))
    except Exception as exc:  # binascii.Error, protobuf's DecodeError
        raise ValueError(f"the template trial is not a base64 protobuf Trial: {exc}") from None
    return study_id, _from_proto_trial(proto), request_id


def encode_finish(
    trial_id: int, state: TrialState, values: Sequence[float] | None, *, request_id: str
) -> bytes:
    values = None if values is None else [float(v) for v in values]
    return json.dumps(
        {"trial_id": int(trial_id), "state": state.name, "values": values, "request_id": request_id}
    ).encode()


def decode_finish(payload: bytes) -> tuple[int, TrialState, list[float] | None, str]:
    document = _json_object(payload, "the trial's end")
    trial_id, state, values = document.get("trial_id"), document.get("state"), document.get("values")
    request_id = _request_id(document)
    if not isinstance(trial_id, int) or request_id is None or state not in TrialState.__members__:
        raise ValueError(
            "a trial's end needs an integer trial_id, a string request_id and a state among "
            f"{', '.join(TrialState.__members__)}"
        )
    if values is not None and not (
        isinstance(values, list) and all(isinstance(v, (int, float)) for v in values)
    ):
        raise ValueError(f"the trial's values must be a list of numbers, not {values!r}")
    return trial_id, TrialState[str(state)], values, request_id


def _json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{what} must be a JSON object")
    return document
