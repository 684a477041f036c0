"""The exported artefact's metadata: what ``model.onnx`` carries and how it is read back. Torch-free.

The whole metadata dict is stored as JSON under the ONNX metadata key ``tlsearch`` (readable with
``onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map["tlsearch"]``); the most
used entries are also stored under their own keys (``labels``, ``task``, ``data_config``,
``input_format``, ``tlsearch_version``, ``backbone_model``, ``provenance``), each JSON-encoded, for
tools that only list keys (Netron shows them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tlsearch.deploy._labels import check_thresholds
from tlsearch.errors import TlsearchError
from tlsearch.preprocessing import DataConfig

METADATA_KEY = "tlsearch"
FORMAT_VERSION = 1
TASKS = ("classification", "regression", "multilabel")
# The exported model's input: a normalised NCHW float batch (the plain model), or raw RGB images
# (uint8 NHWC, any height and width) when the preprocessing is in the graph.
INPUT_NORMALIZED = "nchw_float32_normalized"
INPUT_RAW = "nhwc_uint8_raw"
INPUT_FORMATS = (INPUT_NORMALIZED, INPUT_RAW)
FLAT_KEYS = (
    "labels",
    "task",
    "data_config",
    "input_format",
    "tlsearch_version",
    "backbone_model",
    "provenance",
)


class ModelFormatError(TlsearchError):
    """A file is not an ONNX model exported by tlsearch, or its metadata is invalid (CLI exit code 2)."""

    exit_code = 2


def validate_metadata(metadata: Mapping[str, Any], *, source: str = "metadata") -> dict[str, Any]:
    """Check the entries deploy relies on and that the whole is JSON-able; returns a JSON round-tripped copy.

    Required: ``task`` (one of :data:`TASKS`) and ``data_config`` (:meth:`DataConfig.to_dict`).
    ``labels`` is ``None`` or a list of strings; ``backbone_model`` and ``provenance``, when
    present, are what :meth:`tlsearch.deploy.Provenance.from_metadata` reads.
    """
    try:
        copy = json.loads(json.dumps(dict(metadata), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"{source} must be JSON-serialisable: {exc}") from None
    task = copy.get("task")
    if task not in TASKS:
        raise ModelFormatError(f"{source}: task {task!r} is not valid; valid: {', '.join(TASKS)}")
    if "data_config" not in copy:
        raise ModelFormatError(
            f"{source} has no data_config (DataConfig.to_dict()); it is needed to preprocess"
        )
    try:
        DataConfig.from_dict(copy["data_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{source}: data_config {copy['data_config']!r} is invalid: {exc}") from None
    labels = copy.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise ModelFormatError(f"{source}: labels must be null or a list of strings, got {labels!r}")
    if "thresholds" in copy:  # multilabel (or binary): the decision threshold per label
        binary = copy.get("task") == "classification"
        try:
            check_thresholds(copy["thresholds"], labels=None if binary else labels, source=source)
        except ValueError as exc:
            raise ModelFormatError(str(exc)) from None
        if binary and (
            len(copy["thresholds"]) != 1 or labels is None or copy.get("positive_label") not in labels
        ):
            raise ModelFormatError(
                f"{source}: a classification model's thresholds hold one number, for its "
                f"positive_label (one of the labels), got {copy['thresholds']!r} and "
                f"{copy.get('positive_label')!r}"
            )
    from tlsearch.deploy._provenance import Provenance  # it raises this module's error

    Provenance.from_metadata(copy, source=source)  # backbone_model and provenance, when present
    input_format = copy.get("input_format", INPUT_NORMALIZED)
    if input_format not in INPUT_FORMATS:
        raise ModelFormatError(
            f"{source}: input_format {input_format!r} is not valid; valid: {', '.join(INPUT_FORMATS)}"
        )
    return copy


def metadata_props(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The string → string entries written into the ONNX model's ``metadata_props``."""
    props = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    for key in FLAT_KEYS:
        if key in metadata:
            props[key] = json.dumps(metadata[key])
    return props


def read_metadata(custom_metadata: Mapping[str, str], *, source: str) -> dict[str, Any]:
    """Parse and validate the metadata of a model (``custom_metadata_map``); ``source`` names the file."""
    if METADATA_KEY not in custom_metadata:
        raise ModelFormatError(
            f"{source} is not a model exported by tlsearch: its ONNX metadata has no {METADATA_KEY!r} entry "
            f"(keys: {sorted(custom_metadata) or 'none'}). Export it with tlsearch.export.export_onnx."
        )
    try:
        metadata = json.loads(custom_metadata[METADATA_KEY])
    except ValueError as exc:
        raise ModelFormatError(f"{source}: the {METADATA_KEY!r} metadata is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise ModelFormatError(f"{source}: the {METADATA_KEY!r} metadata is not a JSON object")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFormatError(
            f"{source}: metadata format_version {version!r} is not supported by this tlsearch "
            f"(supports up to {FORMAT_VERSION}); upgrade tlsearch"
        )
    return validate_metadata(metadata, source=source)
