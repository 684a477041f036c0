"""Preprocessing inside the ONNX graph: a model that takes raw ``uint8`` HWC images of any size.

The graph reproduces :func:`tlsearch.preprocessing.resize_center_crop` (either ``crop_mode``) + :func:`normalize` with
standard ONNX operators (opset ≥ 18 for ``Resize(antialias=1)``), so a deployer needs no knowledge
of the training transforms. It is prepended to a plain (``NCHW`` float, normalised) model, fp32 or
INT8 alike. Torch-free.

How close it is to PIL: the sizes, the rounding of the resized side and the crop offsets are
computed exactly as in :mod:`tlsearch.preprocessing`; ``Resize`` with ``antialias=1`` uses PIL's
filters (triangle for bilinear, Keys a = -0.5 for bicubic, scaled by the downscale factor), and
like PIL the graph resizes in two separable passes (width, then height), rounding half up (PIL's
fixed-point ``+ 0.5``, not ONNX ``Round``'s half-to-even) and clipping to ``uint8`` levels after
each. At the image's border PIL renormalises the filter over the taps inside the image, which is
``exclude_outside=1`` for both filters: without it onnxruntime weights the edge pixel as if the
image went on, and the border rows and columns were 5–16 levels off, which a centre crop hides but
``crop_pct: 1`` (and every exact 2×, 3×, 4× reduction of a whole image) keeps. What remains is
PIL's fixed-point arithmetic: pixels differ by at most 2 levels (mostly 1), about 0.01 levels on
average (see :data:`PIXEL_TOLERANCE`); every export measures it.
Nearest (PIL and ONNX disagree on the source pixel at some scales) and Lanczos (no ONNX filter)
are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tlsearch.errors import ExportError
from tlsearch.export._parity import compare, cpu_session, merge, run_batched
from tlsearch.preprocessing import DataConfig, normalize, resize_center_crop

RAW_INPUT_NAME = "image"
MIN_OPSET = 18
_RESIZE_MODES = {"bilinear": "linear", "bicubic": "cubic"}
# Largest per-pixel difference from PIL, in uint8 levels, that check_preprocessing accepts. Measured
# on smooth and uniform-noise images of sizes 20x20 to 300x200, up- and downscaling, exact (2x, 3x,
# 4x) and other ratios, crop_pct 0.875 to 1: at most 2 levels where both passes' fixed-point
# rounding falls the same way (mostly 1), about 0.01 levels on average (bicubic under 0.001).
PIXEL_TOLERANCE = {"bilinear": 2.0, "bicubic": 2.0}


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name=name))


def _aspect_sides(p: str, short: int) -> list[onnx.NodeProto]:
    """``new_h``, ``new_w`` of ``crop_mode: center``: the shorter side to the resize size."""
    return [
        _const(p + "short_f", np.array([float(short)], np.float64)),
        helper.make_node("Min", [p + "h", p + "w"], [p + "min_side"]),
        helper.make_node("Cast", [p + "h"], [p + "h_f"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", [p + "w"], [p + "w_f"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", [p + "min_side"], [p + "min_f"], to=TensorProto.DOUBLE),
        # new side = max(short, round(side * short / shorter side)), as resize_center_crop (round half even).
        helper.make_node("Mul", [p + "h_f", p + "short_f"], [p + "h_x"]),
        helper.make_node("Div", [p + "h_x", p + "min_f"], [p + "h_r"]),
        helper.make_node("Round", [p + "h_r"], [p + "h_rr"]),
        helper.make_node("Cast", [p + "h_rr"], [p + "h_i"], to=TensorProto.INT64),
        helper.make_node("Max", [p + "h_i", p + "short"], [p + "new_h"]),
        helper.make_node("Mul", [p + "w_f", p + "short_f"], [p + "w_x"]),
        helper.make_node("Div", [p + "w_x", p + "min_f"], [p + "w_r"]),
        helper.make_node("Round", [p + "w_r"], [p + "w_rr"]),
        helper.make_node("Cast", [p + "w_rr"], [p + "w_i"], to=TensorProto.INT64),
        helper.make_node("Max", [p + "w_i", p + "short"], [p + "new_w"]),
    ]


def _squash_sides(p: str) -> list[onnx.NodeProto]:
    """``new_h``, ``new_w`` of ``crop_mode: squash``: both sides to the resize size."""
    return [
        helper.make_node("Identity", [p + "short"], [p + "new_h"]),
        helper.make_node("Identity", [p + "short"], [p + "new_w"]),
    ]


def preprocessing_nodes(config: DataConfig, *, input_name: str, output_name: str) -> list[onnx.NodeProto]:
    """Nodes mapping ``input_name`` (N, H, W, 3) uint8 to ``output_name`` (N, 3, S, S) float32 normalised."""
    if config.interpolation not in _RESIZE_MODES:
        raise ExportError(
            f"interpolation {config.interpolation!r} cannot be expressed with ONNX Resize; preprocessing in "
            f"the graph supports: {', '.join(_RESIZE_MODES)}. Export without it and preprocess with "
            "tlsearch.preprocessing (tlsearch.deploy.Predictor does)."
        )
    p = "tlsearch_pre/"
    short, size = config.resize_size, config.input_size
    resize_attrs: dict[str, Any] = {
        "mode": _RESIZE_MODES[config.interpolation],
        "coordinate_transformation_mode": "half_pixel",
        "antialias": 1,
        "exclude_outside": 1,
    }
    if config.interpolation == "bicubic":
        resize_attrs.update(cubic_coeff_a=-0.5)
    mean = np.asarray(config.mean, np.float32).reshape(1, 1, 1, 3)
    std = np.asarray(config.std, np.float32).reshape(1, 1, 1, 3)
    return [
        _const(p + "idx_h", np.array([1], np.int64)),
        _const(p + "idx_w", np.array([2], np.int64)),
        _const(p + "short", np.array([short], np.int64)),
        _const(p + "size", np.array([size], np.int64)),
        _const(p + "two", np.array([2], np.int64)),
        _const(p + "axes", np.array([1, 2], np.int64)),
        _const(p + "u8max", np.array(255.0, np.float32)),
        _const(p + "zero", np.array(0.0, np.float32)),
        _const(p + "half", np.array(0.5, np.float32)),
        _const(p + "mean", mean),
        _const(p + "std", std),
        helper.make_node("Shape", [input_name], [p + "shape"]),
        helper.make_node("Gather", [p + "shape", p + "idx_h"], [p + "h"]),
        helper.make_node("Gather", [p + "shape", p + "idx_w"], [p + "w"]),
        *(_squash_sides(p) if config.crop_mode == "squash" else _aspect_sides(p, short)),
        helper.make_node("Concat", [p + "new_h", p + "new_w"], [p + "new_hw"], axis=0),
        helper.make_node("Cast", [input_name], [p + "img_f"], to=TensorProto.FLOAT),
        # Two separable passes, width first, each rounded half up and clipped to uint8 levels: as PIL does.
        helper.make_node(
            "Resize", [p + "img_f", "", "", p + "new_w"], [p + "wide"], axes=[2], **resize_attrs
        ),
        helper.make_node("Add", [p + "wide", p + "half"], [p + "wide_h"]),
        helper.make_node("Floor", [p + "wide_h"], [p + "wide_r"]),
        helper.make_node("Clip", [p + "wide_r", p + "zero", p + "u8max"], [p + "wide_c"]),
        helper.make_node(
            "Resize", [p + "wide_c", "", "", p + "new_h"], [p + "resized"], axes=[1], **resize_attrs
        ),
        helper.make_node("Add", [p + "resized", p + "half"], [p + "resized_h"]),
        helper.make_node("Floor", [p + "resized_h"], [p + "resized_r"]),
        helper.make_node("Clip", [p + "resized_r", p + "zero", p + "u8max"], [p + "resized_c"]),
        helper.make_node("Sub", [p + "new_hw", p + "size"], [p + "margin"]),
        helper.make_node("Div", [p + "margin", p + "two"], [p + "start"]),
        helper.make_node("Add", [p + "start", p + "size"], [p + "end"]),
        helper.make_node("Slice", [p + "resized_c", p + "start", p + "end", p + "axes"], [p + "crop"]),
        helper.make_node("Div", [p + "crop", p + "u8max"], [p + "unit"]),
        helper.make_node("Sub", [p + "unit", p + "mean"], [p + "centred"]),
        helper.make_node("Div", [p + "centred", p + "std"], [p + "nhwc"]),
        helper.make_node("Transpose", [p + "nhwc"], [output_name], perm=[0, 3, 1, 2]),
    ]


def _raw_input(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.UINT8, ["batch", "height", "width", 3])


def embed_preprocessing(model: onnx.ModelProto, config: DataConfig) -> onnx.ModelProto:
    """A copy of the plain ``model`` (one NCHW float input) that takes raw uint8 NHWC images instead.

    Raises :class:`ExportError` when the model's opset is below 18 (no antialiased Resize) or it does
    not have exactly one input.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ExportError(
            f"preprocessing in the graph needs opset >= {MIN_OPSET}; the model has opset {opset}"
        )
    if len(model.graph.input) != 1:
        names = [i.name for i in model.graph.input]
        raise ExportError(f"preprocessing in the graph needs a model with one input; this one has {names}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    plain_input = graph.input[0].name
    nodes = preprocessing_nodes(config, input_name=RAW_INPUT_NAME, output_name=plain_input)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
    del graph.input[:]
    graph.input.append(_raw_input(RAW_INPUT_NAME))
    return out


def preprocessing_model(config: DataConfig, *, opset: int = MIN_OPSET) -> onnx.ModelProto:
    """The preprocessing graph alone (raw uint8 NHWC → normalised NCHW float), to measure it against PIL."""
    nodes = preprocessing_nodes(config, input_name=RAW_INPUT_NAME, output_name="pixels")
    out = helper.make_tensor_value_info(
        "pixels", TensorProto.FLOAT, ["batch", 3, config.input_size, config.input_size]
    )
    graph = helper.make_graph(nodes, "tlsearch_preprocessing", [_raw_input(RAW_INPUT_NAME)], [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, MIN_OPSET))])


def pil_reference(raw: np.ndarray, config: DataConfig) -> np.ndarray:
    """What training and :class:`tlsearch.deploy.Predictor` feed the plain model for a raw HWC uint8 image."""
    return normalize(resize_center_crop(Image.fromarray(raw), config)[None], config)


def check_preprocessing(
    raw_model: onnx.ModelProto,
    *,
    plain_session: ort.InferenceSession,
    raw_images: Sequence[np.ndarray],
    config: DataConfig,
    task: str,
) -> dict[str, Any]:
    """Verify the raw-input model against the plain model fed with PIL-preprocessed pixels.

    Each raw image (HWC uint8, any size) goes through the raw model at batch 1 and, via
    :func:`pil_reference`, through the plain model. The gate is the pixels: the graph's
    preprocessing must stay within :data:`PIXEL_TOLERANCE` uint8 levels of PIL's, else
    :class:`ExportError`. The outputs' max abs diff and top-1 agreement are measured and reported;
    they depend on how sensitive the model is to a level of pixel noise, not on the export.
    """
    if not raw_images:
        raise ExportError("no images to check the preprocessing graph with")
    raw_session = cpu_session(raw_model.SerializeToString())
    pre_session = cpu_session(preprocessing_model(config).SerializeToString())
    std_levels = np.asarray(config.std, np.float32).reshape(1, 3, 1, 1) * 255.0
    comparisons, pixel_max, pixel_sum, pixel_count, sizes = [], 0.0, 0.0, 0, []
    for i, raw in enumerate(raw_images):
        raw = np.asarray(raw)
        if raw.dtype != np.uint8 or raw.ndim != 3 or raw.shape[2] != 3:
            raise ExportError(f"raw image {i} must be HWC uint8 RGB, got {raw.dtype} {raw.shape}")
        reference_pixels = pil_reference(raw, config)
        graph_pixels = pre_session.run(None, {RAW_INPUT_NAME: raw[None]})[0]
        levels = np.abs(graph_pixels - reference_pixels) * std_levels
        pixel_max = max(pixel_max, float(levels.max()))
        pixel_sum += float(levels.sum())
        pixel_count += levels.size
        reference = run_batched(plain_session, reference_pixels, batch_size=1)
        actual = raw_session.run(None, {RAW_INPUT_NAME: raw[None]})[0]
        comparisons.append(
            compare(reference, actual, task=task, what=f"preprocessing graph, image {i} {raw.shape}")
        )
        sizes.append(list(raw.shape[:2]))
    worst = merge(comparisons)
    tolerance = PIXEL_TOLERANCE[config.interpolation]
    result = {
        "images_checked": len(raw_images),
        "image_sizes": sizes,
        "pixel_max_diff_levels": pixel_max,
        "pixel_mean_diff_levels": pixel_sum / max(pixel_count, 1),
        "pixel_tolerance_levels": tolerance,
        "max_abs_diff": worst.max_abs_diff,
        "top1_agreement": worst.top1_agreement,
    }
    if pixel_max > tolerance:
        raise ExportError(
            f"the preprocessing graph differs from tlsearch.preprocessing (PIL) by up to {pixel_max:.1f} uint8 "
            f"levels, more than the {tolerance} allowed for {config.interpolation!r}; outputs: {worst.describe()}"
        )
    return result
