"""Static INT8 quantisation (QDQ) of an exported model, with its cost in accuracy measured. Torch-free.

The path onnxruntime recommends for CNNs: ``quant_pre_process`` (shape inference and graph
clean-up, without which a dynamo export does not quantise), then ``quantize_static`` in QDQ format
with per-channel int8 weights and uint8 activations whose ranges come from calibration images.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tlsearch.deploy._format import INPUT_NORMALIZED, metadata_props, read_metadata
from tlsearch.errors import ExportError
from tlsearch.export._parity import cpu_session, run_batched
from tlsearch.preprocessing import DataConfig, normalize

ON_DROP = ("error", "warn")


@dataclass(frozen=True)
class QuantizationReport:
    """The INT8 model and what it costs: accuracies on the validation images, sizes and latencies.

    ``accuracy_drop = accuracy_fp32 - accuracy_int8`` (fractions, so 0.01 is one percentage
    point); without labels, accuracies are measured against the fp32 model's own top-1 (so
    ``accuracy_fp32`` is 1 and ``accuracy_int8`` is the agreement). Latencies are medians of
    batch-1 runs in onnxruntime on this machine's CPU.

    ``metric`` names what the ``accuracy_*`` fields measure: ``accuracy`` for classification,
    ``map`` for a multi-label model (the study's default metric; without labels, the fp32 model's
    own label sets at its thresholds are the truth), whose ``top1_agreement`` is then the share of
    images whose label sets agree.
    """

    path: Path
    source: Path
    size_bytes: int
    fp32_size_bytes: int
    accuracy_fp32: float
    accuracy_int8: float
    accuracy_drop: float
    top1_agreement: float
    labels_used: bool
    latency_ms_fp32: float
    latency_ms_int8: float
    calibration_images: int
    validation_images: int
    accepted: bool
    metric: str = "accuracy"

    @property
    def speedup(self) -> float:
        return self.latency_ms_fp32 / self.latency_ms_int8

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"], d["source"], d["speedup"] = str(self.path), str(self.source), self.speedup
        return d


class _Calibration:
    """onnxruntime's ``CalibrationDataReader`` protocol over normalised batches."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self._feeds = iter([{input_name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # not needed for a single pass
        pass


def quantize_int8(
    onnx_path: str | Path,
    *,
    calibration_images: np.ndarray,
    validation_images: np.ndarray,
    validation_labels: np.ndarray | None = None,
    max_accuracy_drop: float = 0.01,
    on_drop: str = "error",
    out_path: str | Path | None = None,
    calibration_batch: int = 8,
) -> QuantizationReport:
    """Write a static QDQ INT8 copy of the plain classification model at ``onnx_path``.

    ``calibration_images`` and ``validation_images`` are ``(N, S, S, 3)`` uint8 from
    :func:`tlsearch.preprocessing.prepare_image` (calibration from the training split, validation
    from the validation split); ``validation_labels`` are class indices (None: the fp32 model's
    own top-1 is the reference). The output goes to ``out_path`` (default ``<stem>.int8.onnx``
    beside the source) with the source's metadata.

    When accuracy drops by more than ``max_accuracy_drop`` (a fraction: 0.01 = 1 pp),
    ``on_drop="error"`` raises :class:`ExportError` and writes nothing; ``"warn"`` writes the model,
    warns, and returns a report with ``accepted=False``.
    """
    if on_drop not in ON_DROP:
        raise ExportError(f"on_drop {on_drop!r} is not valid; valid: {', '.join(ON_DROP)}")
    source = Path(onnx_path)
    out = Path(out_path) if out_path is not None else source.with_name(source.stem + ".int8.onnx")
    fp32 = cpu_session(source)
    meta = read_metadata(fp32.get_modelmeta().custom_metadata_map, source=str(source))
    if meta["task"] not in ("classification", "multilabel"):
        raise ExportError(
            f"INT8 quantisation supports classification and multilabel models; {source} is a "
            f"{meta['task']} model"
        )
    if meta.get("input_format") != INPUT_NORMALIZED:
        raise ExportError(
            f"{source} takes raw images (preprocessing in the graph); quantise the plain export instead"
        )
    config = DataConfig.from_dict(meta["data_config"])
    calibration = _normalised(calibration_images, config, what="calibration_images")
    validation = _normalised(validation_images, config, what="validation_images")
    input_name = fp32.get_inputs()[0].name

    workdir = Path(tempfile.mkdtemp(prefix=".tlsearch-int8-", dir=out.parent))
    try:
        int8_file = workdir / "int8.onnx"
        _quantize(
            source,
            int8_file,
            workdir=workdir,
            input_name=input_name,
            batches=[
                calibration[i : i + calibration_batch] for i in range(0, len(calibration), calibration_batch)
            ],
        )
        proto = onnx.load(str(int8_file))
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, metadata_props({**meta, "quantization": "int8_static_qdq"}))
        onnx.save_model(proto, str(int8_file), save_as_external_data=False)
        int8 = cpu_session(int8_file)
        out_fp32 = run_batched(fp32, validation, batch_size=32)
        out_int8 = run_batched(int8, validation, batch_size=32)
        labels_used = validation_labels is not None
        gate = _multilabel_gate if meta["task"] == "multilabel" else _accuracy_gate
        metric, acc_fp32, acc_int8, agreement = gate(out_fp32, out_int8, validation_labels, meta)
        drop = acc_fp32 - acc_int8
        accepted = drop <= max_accuracy_drop
        message = (
            f"INT8 {metric} {acc_int8:.2%} vs fp32 {acc_fp32:.2%} on {len(validation)} images: "
            f"a drop of {drop * 100:.2f} pp, more than the {max_accuracy_drop * 100:.2f} pp allowed"
        )
        if not accepted and on_drop == "error":
            raise ExportError(
                message + f"; {out} not written (to keep it anyway: `tlsearch export DIR --int8 "
                "--on-accuracy-drop warn`, or export.on_accuracy_drop: warn in the study; "
                "on_drop='warn' from Python)"
            )
        report = QuantizationReport(
            path=out,
            source=source,
            size_bytes=int8_file.stat().st_size,
            fp32_size_bytes=source.stat().st_size,
            accuracy_fp32=acc_fp32,
            accuracy_int8=acc_int8,
            accuracy_drop=drop,
            top1_agreement=agreement,
            labels_used=labels_used,
            latency_ms_fp32=median_latency_ms(fp32, validation[:1]),
            latency_ms_int8=median_latency_ms(int8, validation[:1]),
            calibration_images=len(calibration),
            validation_images=len(validation),
            accepted=accepted,
            metric=metric,
        )
        os.replace(int8_file, out)
        out.with_suffix(".json").write_text(json.dumps({"quantization": report.to_dict()}, indent=2) + "\n")
        if not accepted:
            warnings.warn(message, stacklevel=2)
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _accuracy_gate(
    out_fp32: np.ndarray, out_int8: np.ndarray, labels: np.ndarray | None, meta: dict[str, Any]
) -> tuple[str, float, float, float]:
    """Classification: top-1 accuracy of each against ``labels`` (class indices; default the fp32
    top-1), and the share of images whose top-1 agrees."""
    top_fp32, top_int8 = out_fp32.argmax(axis=1), out_int8.argmax(axis=1)
    truth = np.asarray(labels) if labels is not None else top_fp32
    if truth.shape != (len(out_fp32),):
        raise ExportError(f"validation_labels must have shape ({len(out_fp32)},), got {truth.shape}")
    agreement = float(np.mean(top_fp32 == top_int8))
    return "accuracy", float(np.mean(top_fp32 == truth)), float(np.mean(top_int8 == truth)), agreement


def _multilabel_gate(
    out_fp32: np.ndarray, out_int8: np.ndarray, labels: np.ndarray | None, meta: dict[str, Any]
) -> tuple[str, float, float, float]:
    """Multilabel: mAP of each against 0/1 ``labels`` ``(N, L)`` (default: the fp32 label sets at
    the model's thresholds), and the share of images whose label sets agree."""
    from tlsearch.deploy._labels import label_sets, mean_average_precision, thresholds_of

    thresholds = thresholds_of(meta, out_fp32.shape[1])
    sets_fp32, sets_int8 = label_sets(out_fp32, thresholds), label_sets(out_int8, thresholds)
    truth = np.asarray(labels, dtype=np.float64) if labels is not None else sets_fp32.astype(np.float64)
    if truth.shape != out_fp32.shape:
        raise ExportError(f"validation_labels must have shape {out_fp32.shape}, got {truth.shape}")
    agreement = float(np.mean(np.all(sets_fp32 == sets_int8, axis=1)))
    return (
        "map",
        mean_average_precision(out_fp32, truth),
        mean_average_precision(out_int8, truth),
        agreement,
    )


def _normalised(images: np.ndarray, config: DataConfig, *, what: str) -> np.ndarray:
    images = np.asarray(images)
    s = config.input_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3) or len(images) == 0:
        raise ExportError(
            f"{what} must be a non-empty (N, {s}, {s}, 3) uint8 array, got {images.dtype} {images.shape}"
        )
    return normalize(images, config)


def _quantize(
    source: Path, target: Path, *, workdir: Path, input_name: str, batches: list[np.ndarray]
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = workdir / "prepared.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
            quantize_static(
                str(prepared),
                str(target),
                _Calibration(input_name, batches),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
            )
    except Exception as exc:
        raise ExportError(
            f"onnxruntime quantisation of {source} failed: {type(exc).__name__}: {exc}"
        ) from None


def median_latency_ms(session: Any, x: np.ndarray, *, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``session.run`` on ``x`` in milliseconds."""
    name = session.get_inputs()[0].name
    for _ in range(warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)
