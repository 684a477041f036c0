"""Static INT8 quantisation: a smaller model, its accuracy cost measured, and the refusal path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch

from tlsearch.errors import ExportError
from tlsearch.export import export_onnx, quantize_int8
from tlsearch.preprocessing import DataConfig

CONFIG = DataConfig(48)


def images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:48] / 48
    out = [
        np.stack([np.sin(a * x), np.cos(b * y), np.sin(a * b * x * y)], -1)
        for a, b in rng.uniform(1, 8, (n, 2))
    ]
    return np.clip(np.asarray(out) * 110 + 128 + rng.normal(0, 8, (n, 48, 48, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4).eval()
    path = tmp_path_factory.mktemp("int8") / "model.onnx"
    meta = {"task": "classification", "labels": ["a", "b", "c", "d"], "data_config": CONFIG.to_dict()}
    return export_onnx(model, path=path, metadata=meta, validation_images=images(4, 0)).path


def test_int8_model_is_smaller_and_its_accuracy_delta_is_reported(fp32: Path) -> None:
    validation = images(16, 2)
    labels = ort_top1(fp32, validation)
    labels[:2] = (labels[:2] + 1) % 4  # real labels the fp32 model gets partly wrong
    report = quantize_int8(
        fp32,
        calibration_images=images(16, 1),
        validation_images=validation,
        validation_labels=labels,
        max_accuracy_drop=1.0,
    )
    assert report.path == fp32.with_name("model.int8.onnx") and report.path.exists()
    assert report.size_bytes < 0.6 * report.fp32_size_bytes
    assert report.accuracy_fp32 == pytest.approx(14 / 16)
    assert report.accuracy_drop == pytest.approx(report.accuracy_fp32 - report.accuracy_int8)
    assert report.labels_used and report.accepted
    assert report.latency_ms_fp32 > 0 and report.latency_ms_int8 > 0
    session = ort.InferenceSession(str(report.path))
    ops = {n.op_type for n in __import__("onnx").load(str(report.path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    meta = json.loads(session.get_modelmeta().custom_metadata_map["tlsearch"])
    assert meta["labels"] == ["a", "b", "c", "d"] and meta["quantization"] == "int8_static_qdq"
    assert (
        json.loads(report.path.with_suffix(".json").read_text())["quantization"]["accuracy_drop"]
        == report.accuracy_drop
    )


def test_an_impossible_threshold_is_refused_and_writes_nothing(fp32: Path, tmp_path: Path) -> None:
    out = tmp_path / "refused.int8.onnx"
    with pytest.raises(
        ExportError, match=r"drop of .* pp, more than the -100\.00 pp allowed.*--on-accuracy-drop warn"
    ):
        quantize_int8(
            fp32,
            calibration_images=images(8, 1),
            validation_images=images(8, 2),
            max_accuracy_drop=-1,
            out_path=out,
        )
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_warn_mode_keeps_the_model_and_marks_it_not_accepted(fp32: Path, tmp_path: Path) -> None:
    out = tmp_path / "kept.int8.onnx"
    with pytest.warns(UserWarning, match="more than the"):
        report = quantize_int8(
            fp32,
            calibration_images=images(8, 1),
            validation_images=images(8, 2),
            max_accuracy_drop=-1,
            on_drop="warn",
            out_path=out,
        )
    assert out.exists() and not report.accepted and not report.labels_used
    assert report.accuracy_fp32 == 1.0  # without labels the fp32 model's own top-1 is the reference


def ort_top1(path: Path, prepared: np.ndarray) -> np.ndarray:
    from tlsearch.preprocessing import normalize

    session = ort.InferenceSession(str(path))
    return session.run(None, {"input": normalize(prepared, CONFIG)})[0].argmax(axis=1)


@pytest.fixture
def int8_misses_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """The INT8 model's top-1 differs from fp32's on the first 2 validation images (a known 2/8 drop)."""
    import tlsearch.export._quantize as quantize

    real, calls = quantize.run_batched, []

    def run(session: ort.InferenceSession, x: np.ndarray, *, batch_size: int) -> np.ndarray:
        out = real(session, x, batch_size=batch_size)
        calls.append(session)
        if len(calls) == 2:  # the second run is the INT8 model's on the validation images
            out = out.copy()
            out[:2] = np.roll(out[:2], 1, axis=1)
        return out

    monkeypatch.setattr(quantize, "run_batched", run)


def test_the_refusal_states_the_measured_drop_and_the_threshold(
    fp32: Path, tmp_path: Path, int8_misses_two: None
) -> None:
    with pytest.raises(ExportError, match=r"a drop of 25\.00 pp, more than the 10\.00 pp allowed"):
        quantize_int8(
            fp32,
            calibration_images=images(8, 1),
            validation_images=images(8, 2),
            max_accuracy_drop=0.1,
            out_path=tmp_path / "refused.int8.onnx",
        )


def test_a_drop_equal_to_the_threshold_is_accepted(fp32: Path, tmp_path: Path, int8_misses_two: None) -> None:
    report = quantize_int8(
        fp32,
        calibration_images=images(8, 1),
        validation_images=images(8, 2),
        max_accuracy_drop=0.25,
        out_path=tmp_path / "edge.int8.onnx",
    )
    assert report.accuracy_drop == 0.25 and report.accepted
