"""Checks that a model's metadata agrees with its graph, made when a model is opened. Torch-free.

The metadata is only what a file claims: a model whose labels, input size or input format do not
match the graph would print wrong labels or fail inside onnxruntime, so :class:`Predictor` refuses
it up front with a message that names the metadata key and its value. The preprocessing's own
bounds (input size, crop, mean and std) are :class:`tlsearch.preprocessing.DataConfig`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from tlsearch.deploy._format import INPUT_RAW, ModelFormatError

# onnxruntime's names of the element types each input format takes
INPUT_TYPES = {INPUT_RAW: "tensor(uint8)"}
NORMALIZED_INPUT_TYPE = "tensor(float)"


class NodeArg(Protocol):
    """What onnxruntime says about one graph input or output."""

    name: str
    type: str
    shape: Sequence[Any]


def check_graph(
    metadata: dict[str, Any], inputs: Sequence[NodeArg], outputs: Sequence[NodeArg], *, source: str
) -> int | None:
    """Refuse metadata the graph contradicts; returns the number of outputs (None when the graph
    leaves it dynamic). ``source`` names the file in messages."""
    if len(inputs) != 1 or not outputs:
        raise ModelFormatError(
            f"{source}: a tlsearch model has one input and at least one output, this graph has "
            f"{len(inputs)} input(s) and {len(outputs)} output(s)"
        )
    _check_input(metadata, inputs[0], source=source)
    return _check_outputs(metadata, outputs[0], source=source)


def _check_input(metadata: dict[str, Any], node: NodeArg, *, source: str) -> None:
    input_format = metadata.get("input_format")
    size = metadata["data_config"]["input_size"]
    shape = list(node.shape)
    raw = input_format == INPUT_RAW
    want_type = INPUT_TYPES.get(str(input_format), NORMALIZED_INPUT_TYPE)
    described = (
        f"input_format {input_format!r}" if input_format is not None else "no input_format (normalised NCHW)"
    )
    if node.type != want_type or len(shape) != 4:
        raise ModelFormatError(
            f"{source}: metadata says {described}, which takes a 4-d {want_type} input, but the graph's "
            f"input {node.name!r} is {node.type} of shape {shape}"
        )
    channels = shape[3] if raw else shape[1]
    if isinstance(channels, int) and channels != 3:
        raise ModelFormatError(
            f"{source}: metadata says {described} (3 colour channels), but the graph's input "
            f"{node.name!r} has shape {shape}"
        )
    if not raw:
        for side in shape[2:]:
            if isinstance(side, int) and side != size:
                raise ModelFormatError(
                    f"{source}: metadata data_config.input_size is {size!r}, but the graph's input "
                    f"{node.name!r} has shape {shape}"
                )


def _check_outputs(metadata: dict[str, Any], node: NodeArg, *, source: str) -> int | None:
    shape = list(node.shape)
    if len(shape) != 2:
        raise ModelFormatError(
            f"{source}: a tlsearch model's output is (batch, outputs), the graph's {node.name!r} has shape {shape}"
        )
    n = shape[1] if isinstance(shape[1], int) else None
    declared = metadata.get("num_outputs")
    if declared is not None:
        if not isinstance(declared, int) or isinstance(declared, bool) or declared < 1:
            raise ModelFormatError(
                f"{source}: metadata num_outputs must be a positive integer, got {declared!r}"
            )
        if n is not None and declared != n:
            raise ModelFormatError(
                f"{source}: metadata num_outputs is {declared}, but the graph's output {node.name!r} has {n}"
            )
        n = declared
    labels = metadata.get("labels")
    if labels is not None and n is not None and len(labels) != n:
        raise ModelFormatError(
            f"{source}: metadata labels has {len(labels)} entries ({_short(labels)}), but the model has "
            f"{n} outputs"
        )
    return n


def _short(values: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(v[:40]) for v in values[:limit])
    return shown + (f", … ({len(values) - limit} more)" if len(values) > limit else "")
