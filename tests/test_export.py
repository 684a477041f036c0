"""export_onnx on a tiny model of each backbone family: checker, parity, dynamic batch, metadata."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
import torchvision
from torch import nn

from tlsearch.errors import ExportError
from tlsearch.export import export_onnx
from tlsearch.preprocessing import DataConfig, normalize
from tlsearch.train import TargetScale

SIZE = 48
CONFIG = DataConfig(SIZE, interpolation="bicubic", crop_pct=0.9)
LABELS = ["cat", "dog", "fox"]


def images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth structured images (not pure noise), as prepare_image would return them."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(1, 6, 3)
        img = np.stack([np.sin(a * x + b * y), np.cos(b * x * y * 4), np.sin(c * (x - y))], -1) * 110 + 128
        out.append(np.clip(img + rng.normal(0, 10, img.shape), 0, 255))
    return np.asarray(out, dtype=np.uint8)


def metadata(**extra: object) -> dict[str, object]:
    return {
        "task": "classification",
        "labels": LABELS,
        "data_config": CONFIG.to_dict(),
        "trial": 7,
        "choices": {"backbone": "timm", "backbone.timm.model": "test_resnet", "head": "linear"},
        "metric": "accuracy",
        "value": 0.91,
        **extra,
    }


def build(family: str) -> nn.Module:
    torch.manual_seed(0)
    if family == "torchvision_mobilenet_v3_small":
        model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=len(LABELS))
    else:
        model = (
            timm.create_model(family, pretrained=False, num_classes=len(LABELS), img_size=SIZE)
            if family in ("test_vit",)
            else timm.create_model(family, pretrained=False, num_classes=len(LABELS))
        )
    return model.eval()


FAMILIES = ["test_resnet", "test_efficientnet", "test_vit", "test_convnext", "torchvision_mobilenet_v3_small"]


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    model = build(request.param)
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    report = export_onnx(model, path=path, metadata=metadata(), validation_images=images(6))
    return model, report


def test_export_passes_checks_and_writes_one_file(exported) -> None:  # type: ignore[no-untyped-def]
    _, report = exported
    assert report.path.exists() and report.model_json.exists()
    assert sorted(p.name for p in report.path.parent.iterdir()) == [
        "model.json",
        "model.onnx",
    ]  # no .data file
    onnx.checker.check_model(str(report.path), full_check=True)
    assert report.max_abs_diff <= 1e-4
    assert report.top1_agreement == 1.0
    assert 1 in report.batch_sizes_checked and max(report.batch_sizes_checked) >= 6
    assert report.size_bytes == report.path.stat().st_size
    assert 0 < report.seconds < 600  # how long the export took, as reported
    proto = onnx.load(str(report.path))
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    assert not proto.functions
    assert [o.name for o in proto.graph.output] == ["logits"]  # a classifier's output is named for what it is


def test_dynamic_batch_matches_pytorch_at_batch_3(exported) -> None:  # type: ignore[no-untyped-def]
    model, report = exported
    x = normalize(images(3, seed=5), CONFIG)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] not in (1, 2, 6)  # symbolic, not the example's size
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    assert got.shape == (3, len(LABELS))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_metadata_round_trips_through_onnxruntime_and_model_json(exported) -> None:  # type: ignore[no-untyped-def]
    _, report = exported
    meta_map = ort.InferenceSession(str(report.path)).get_modelmeta().custom_metadata_map
    carried = json.loads(meta_map["tlsearch"])
    for key, value in metadata().items():
        assert carried[key] == value
    assert json.loads(meta_map["labels"]) == LABELS
    assert json.loads(meta_map["task"]) == "classification"
    assert carried["input_format"] == "nchw_float32_normalized" and carried["num_outputs"] == 3
    assert carried["tlsearch_version"]
    sidecar = json.loads(report.model_json.read_text())
    assert sidecar["metadata"] == carried
    assert sidecar["sha256"] == report.sha256
    assert sidecar["verification"]["max_abs_diff"] == report.max_abs_diff


class _DiffersWhenExported(nn.Module):
    """Exports a graph that is not the eager model: the kind of bug parity must catch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if torch.onnx.is_in_onnx_export():
            y = y + 0.01
        return y


def test_parity_failure_raises_with_the_diff_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "out" / "model.onnx"
    with pytest.raises(ExportError, match=r"max abs diff 0\.01") as info:
        export_onnx(
            _DiffersWhenExported().eval(), path=path, metadata=metadata(), validation_images=images(4)
        )
    assert "dynamo exporter" in str(info.value) and "torchscript exporter" in str(info.value)
    assert not path.exists() and not path.with_suffix(".json").exists()
    assert list(path.parent.iterdir()) == []  # no temporary leftovers either


def test_tolerance_below_the_real_difference_fails(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    )
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="tolerance 0"):
        export_onnx(
            _Scaled(model).eval(),
            path=path,
            metadata=metadata(),
            validation_images=images(3),
            tolerance=0.0,
            exporter="torchscript",
        )
    assert not path.exists()


class _Scaled(nn.Module):
    """Large outputs so that float32 rounding differs between PyTorch and onnxruntime."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 12345.678 + torch.exp(self.inner(x))


def test_model_in_training_mode_is_refused(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * SIZE * SIZE, 3))
    with pytest.raises(ExportError, match=r"training mode.*model\.eval\(\)") as info:
        export_onnx(model, path=tmp_path / "m.onnx", metadata=metadata(), validation_images=images(2))
    # the modules named by their path, the root (no path) by its class
    assert "(4 module(s), e.g. ['Sequential', '0', '1'])" in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"validation_images": np.zeros((2, 32, 32, 3), np.uint8)}, r"\(N, 48, 48, 3\) uint8"),
        ({"metadata": metadata(task="segmentation")}, "valid: classification, regression"),
        ({"metadata": metadata(labels=["a", "b"])}, "2 labels but the model has 3 outputs"),
        ({"metadata": metadata(trial=object())}, "JSON"),
        ({"exporter": "fast"}, "valid: auto, dynamo, torchscript"),
        ({"max_batch": 1}, r"max_batch must be >= 2 but got 1"),
    ],
)
def test_bad_arguments_name_the_problem(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 3)).eval()
    args: dict[str, object] = {
        "path": tmp_path / "m.onnx",
        "metadata": metadata(),
        "validation_images": images(2),
    }
    args.update(kwargs)
    with pytest.raises(ExportError, match=message):
        export_onnx(model, **args)  # type: ignore[arg-type]
    assert not (tmp_path / "m.onnx").exists()


class _Times(nn.Module):
    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.factor


def test_parity_bound_scales_with_large_outputs_only() -> None:
    from tlsearch.export._onnx import parity_bound

    assert parity_bound(1e-4, np.array([[0.5, -0.9]])) == pytest.approx(1e-4)  # within ±1: absolute
    assert parity_bound(1e-4, np.array([[70.0, -3.0]])) == pytest.approx(7e-3)


def test_correct_export_with_large_logits_passes_and_a_wrong_one_still_fails(tmp_path: Path) -> None:
    """Logits of ~1e4: float32 rounding alone exceeds 1e-4 absolute, a real graph error is far larger."""
    torch.manual_seed(0)
    inner = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    )
    report = export_onnx(
        _Times(inner, 1e4).eval(), path=tmp_path / "ok.onnx", metadata=metadata(), validation_images=images(4)
    )
    assert report.path.is_file()
    with pytest.raises(ExportError, match="max abs diff"):
        export_onnx(
            _Times(_DiffersWhenExported(), 1e4).eval(),
            path=tmp_path / "bad.onnx",
            metadata=metadata(),
            validation_images=images(4),
        )


class _NearTieFlippedWhenExported(nn.Module):
    """Logits 0 and 1e-5 (top-1: class 1); the exported graph adds 3e-5 to class 0 only: every
    number is within the 1e-4 tolerance, yet the exported model's top-1 is class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = self.net(x) * 0.0
        logits = zero + torch.tensor([0.0, 1e-5, -1.0])
        if torch.onnx.is_in_onnx_export():
            logits = logits + torch.tensor([3e-5, 0.0, 0.0])
        return logits


def test_export_refuses_a_flipped_top1_even_when_every_number_is_within_tolerance(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"top-1 agreement 0\.0%") as info:
        export_onnx(
            _NearTieFlippedWhenExported().eval(),
            path=path,
            metadata=metadata(),
            validation_images=images(4),
            tolerance=1e-4,
            exporter="torchscript",
        )
    assert "max abs diff 3e-05" in str(info.value)  # the numbers alone would have passed
    assert not path.exists() and not path.with_suffix(".json").exists()


def test_a_regression_export_outputs_the_targets_units_and_says_so(tmp_path: Path) -> None:
    """Bugs caught: the target scale left out of the graph (outputs in standard deviations), or the
    metadata not saying ``in_graph`` (a reader would apply the scale twice)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    scale = TargetScale(mean=(1000.0, 5.0), std=(200.0, 0.5))
    meta = {"task": "regression", "labels": ["price", "rating"], "data_config": CONFIG.to_dict()}
    report = export_onnx(
        model, path=tmp_path / "model.onnx", metadata=meta, validation_images=images(4), target_scale=scale
    )
    x = normalize(images(3, seed=5), CONFIG)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert [o.name for o in session.get_outputs()] == ["values"]  # not "logits": these are target values
    with torch.inference_mode():
        want = (model(torch.from_numpy(x)) * torch.tensor(scale.std) + torch.tensor(scale.mean)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    carried = json.loads(session.get_modelmeta().custom_metadata_map["tlsearch"])
    assert carried["target_scale"] == {"mean": [1000.0, 5.0], "std": [200.0, 0.5], "in_graph": True}


def test_comparing_outputs_with_no_columns_finds_no_difference() -> None:
    """Bug caught: an empty output (a model with no outputs left, or a zero-row batch) reported as
    differing, which would refuse an export whose outputs agree trivially."""
    from tlsearch.export._parity import compare

    empty = np.zeros((3, 0), np.float32)
    assert compare(empty, empty.copy(), task="regression", what="empty").max_abs_diff == 0.0


def test_one_validation_image_still_checks_a_second_batch_size(tmp_path: Path) -> None:
    """Bug caught: with a single image the dynamic batch axis is never exercised (or not reported)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    meta = {"task": "classification", "labels": ["a", "b", "c"], "data_config": CONFIG.to_dict()}
    report = export_onnx(model, path=tmp_path / "model.onnx", metadata=meta, validation_images=images(1))
    assert tuple(report.batch_sizes_checked) == (1, 2)


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_torchscript_export_writes_opset_18_and_checks_batches_of_up_to_16(tmp_path: Path) -> None:
    """Bugs caught: the TorchScript fallback's default opset moved; the default largest batch checked
    moved (20 images: batches of 1, 16 and the last 4); the report's dict lost; the report writable;
    a missing parent folder of the path not made; another axis than the batch made dynamic."""
    report = export_onnx(
        _small(),
        path=tmp_path / "new" / "folder" / "m.onnx",  # its folders are made
        metadata=metadata(),
        validation_images=images(20),
        exporter="torchscript",
    )
    assert report.exporter == "torchscript" and report.opset == 18
    assert {o.domain: o.version for o in onnx.load(str(report.path)).opset_import}[""] == 18
    assert report.batch_sizes_checked == (1, 4, 16)
    graph = onnx.load(str(report.path)).graph  # the batch axis is symbolic in and out, the rest fixed
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and all(d.dim_value and not d.dim_param for d in dims[1:]), value
    d = report.to_dict()
    assert d["path"] == str(report.path) and d["batch_sizes_checked"] == [1, 4, 16]
    assert json.loads(json.dumps(d))["opset"] == 18
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.opset = 17  # type: ignore[misc]


def test_a_max_batch_of_2_is_accepted(tmp_path: Path) -> None:
    """Bugs caught: the smallest valid ``max_batch`` (2) refused (``<=`` or ``< 3``)."""
    report = export_onnx(
        _small(),
        path=tmp_path / "m.onnx",
        metadata=metadata(),
        validation_images=images(4),
        exporter="torchscript",
        max_batch=2,
    )
    assert report.batch_sizes_checked == (1, 2)


class _OffWhenExported(nn.Module):
    """Outputs within ±1 that the exported graph shifts by 1.5e-4: over the default 1e-4 tolerance."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _small()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x) * 0.0 + torch.tensor([0.5, 0.1, -0.2])
        if torch.onnx.is_in_onnx_export():
            y = y + 1.5e-4
        return y


def test_the_default_tolerance_is_1e_4(tmp_path: Path) -> None:
    """Bug caught: the default tolerance loosened (a 1.5e-4 difference let through)."""
    with pytest.raises(ExportError, match=r"max abs diff 0\.00015"):
        export_onnx(
            _OffWhenExported().eval(),
            path=tmp_path / "m.onnx",
            metadata=metadata(),
            validation_images=images(4),
            exporter="torchscript",
        )
    report = export_onnx(
        _OffWhenExported().eval(),
        path=tmp_path / "m.onnx",
        metadata=metadata(),
        validation_images=images(4),
        exporter="torchscript",
        tolerance=2e-4,
    )
    assert report.tolerance == 2e-4 and report.max_abs_diff == pytest.approx(1.5e-4, rel=1e-2)


class _NotForTorchExport(nn.Module):
    """A model torch.export cannot take (it raises while exporting) but TorchScript tracing can."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _small()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            raise NotImplementedError("no torch.export for this model")
        return self.net(x)


def test_auto_falls_back_to_torchscript_and_says_why(tmp_path: Path) -> None:
    """Bug caught: the fallback's reason lost (``or`` → ``and``: always None)."""
    report = export_onnx(
        _NotForTorchExport().eval(),
        path=tmp_path / "m.onnx",
        metadata=metadata(),
        validation_images=images(2),
    )
    assert report.exporter == "torchscript"
    assert (report.fallback_reason or "").startswith(
        "dynamo exporter: torch.onnx.export failed: TorchExportError"
    )
    written = json.loads(report.model_json.read_text())["verification"]
    assert written["fallback_reason"] == report.fallback_reason


def test_the_fallback_reason_has_no_colour_codes_and_keeps_the_error_lines_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bugs caught: terminal colour codes of the exporter's message kept in ``fallback_reason``
    (and ``model.json``); the message cut at 500 characters, inside the line that names the error;
    a cut tail not said (or its size wrong)."""
    import tlsearch.export._onnx as onnx_module

    real = onnx_module._run_exporter
    first = "\x1b[1;31mUnsupported operator aten::weird\x1b[0m at " + "x" * 600 + " END-OF-FIRST-LINE"
    second = "\x1b[33mhint: rewrite the forward\x1b[0m"
    tail = "\n".join(f"  frame {i}: " + "y" * 60 for i in range(100))
    message = f"{first}\n{second}\n{tail}"

    def dynamo_fails(*args: Any, **kwargs: Any) -> None:
        if kwargs["exporter"] == "dynamo":
            raise RuntimeError(message)
        real(*args, **kwargs)

    monkeypatch.setattr(onnx_module, "_run_exporter", dynamo_fails)
    report = export_onnx(_small(), path=tmp_path / "m.onnx", metadata=metadata(), validation_images=images(2))
    assert report.exporter == "torchscript"
    reason = report.fallback_reason or ""
    clean_first = "Unsupported operator aten::weird at " + "x" * 600 + " END-OF-FIRST-LINE"
    assert reason.startswith(f"dynamo exporter: torch.onnx.export failed: RuntimeError: {clean_first}\n")
    assert "\nhint: rewrite the forward\n" in reason and "\x1b" not in reason
    kept, _, note = reason.rpartition(" … (")
    clean = message.replace("\x1b[1;31m", "").replace("\x1b[0m", "").replace("\x1b[33m", "")
    cut = len(clean) - len(kept.split("RuntimeError: ", 1)[1])
    assert note == f"{cut} more characters)" and 0 < cut < len(tail)
    assert len(reason) < 1100
    written = json.loads(report.model_json.read_text())["verification"]["fallback_reason"]
    assert written == reason


def test_an_error_of_one_very_long_line_is_cut_inside_it_and_a_short_one_is_kept() -> None:
    """Bugs caught: a message without line breaks kept whole however long (or dropped to nothing);
    a short message cut or changed beyond its escape codes."""
    from tlsearch.export._messages import FIRST_LINE_MAX, error_text

    assert error_text(ValueError("\x1b]8;;https://x\x07link\x1b]8;;\x07 \x1b[2Kshape (2, 3)\n  at here")) == (
        "link shape (2, 3)\n  at here"
    )
    long = error_text(ValueError("z" * 10_000))
    assert long == "z" * FIRST_LINE_MAX + f" … ({10_000 - FIRST_LINE_MAX} more characters)"


class _WithItsOwnConfig(nn.Module):
    data_config = DataConfig(SIZE, mean=(0.1, 0.2, 0.3))  # not CONFIG: the metadata's must win

    def __init__(self) -> None:
        super().__init__()
        self.net = _small()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_the_metadatas_data_config_wins_and_labels_default_to_none(tmp_path: Path) -> None:
    """Bugs caught: a model's own data_config replacing the one the metadata gives; a metadata
    without labels written without the ``labels`` key (readers expect it, None when absent)."""
    meta = {k: v for k, v in metadata().items() if k != "labels"}
    report = export_onnx(
        _WithItsOwnConfig().eval(),
        path=tmp_path / "m.onnx",
        metadata=meta,
        validation_images=images(2),
        exporter="torchscript",
    )
    written = json.loads(report.model_json.read_text())["metadata"]
    assert written["data_config"] == CONFIG.to_dict()
    assert "labels" in written and written["labels"] is None


def test_a_cleanup_that_fails_does_not_hide_the_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug caught: the temporary folder's removal allowed to raise, replacing the parity refusal
    with an OSError (here the folder is already gone when the cleanup runs)."""
    import shutil

    import tlsearch.export._onnx as onnx_module

    real = onnx_module.cpu_session

    def session_then_folder_gone(file: Path) -> ort.InferenceSession:
        session = real(file)
        shutil.rmtree(file.parent)
        return session

    monkeypatch.setattr(onnx_module, "cpu_session", session_then_folder_gone)
    with pytest.raises(ExportError, match="max abs diff"):
        export_onnx(
            _DiffersWhenExported().eval(),
            path=tmp_path / "m.onnx",
            metadata=metadata(),
            validation_images=images(2),
            exporter="torchscript",
        )


def test_a_model_the_onnx_checker_rejects_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug caught: the exported file never put through ``onnx.checker`` (full check), so a graph it
    rejects would be written as long as onnxruntime runs it."""

    def rejects(model: object, full_check: bool = False) -> None:
        assert full_check  # the strict check, with shape inference
        raise onnx.checker.ValidationError("a rejected graph")

    monkeypatch.setattr(onnx.checker, "check_model", rejects)
    with pytest.raises(
        ExportError, match="onnx.checker rejected the exported model: ValidationError: a rejected graph"
    ):
        export_onnx(
            _small(),
            path=tmp_path / "m.onnx",
            metadata=metadata(),
            validation_images=images(2),
            exporter="torchscript",
        )
    assert list(tmp_path.iterdir()) == []


def test_export_from_inside_inference_mode_uses_dynamo_and_shows_no_exporter_warnings(tmp_path: Path) -> None:
    """Bugs caught: the export run under the caller's inference mode (torch.export then fails and
    ``auto`` silently falls back to TorchScript); the exporters' warnings shown to the user."""
    with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export_onnx(
            _small(), path=tmp_path / "m.onnx", metadata=metadata(), validation_images=images(2)
        )
    assert report.exporter == "dynamo" and report.fallback_reason is None
    assert [str(w.message) for w in caught] == []


def test_the_exporter_asked_for_is_the_one_run(tmp_path: Path) -> None:
    """Bug caught: ``exporter == "dynamo"`` inverted (each name runs the other exporter): a model
    torch.export cannot take exports with TorchScript and is refused by dynamo."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export_onnx(
            _NotForTorchExport().eval(),
            path=tmp_path / "ts.onnx",
            metadata=metadata(),
            validation_images=images(2),
            exporter="torchscript",
        )
    assert report.exporter == "torchscript" and [str(w.message) for w in caught] == []
    with pytest.raises(ExportError, match="^dynamo exporter: torch.onnx.export failed: TorchExportError"):
        export_onnx(
            _NotForTorchExport().eval(),
            path=tmp_path / "dynamo.onnx",
            metadata=metadata(),
            validation_images=images(2),
            exporter="dynamo",
        )


class _WrongAtBatch1WhenExported(nn.Module):
    """The exported graph adds 0.01 to every output when its batch holds one image, only then
    (``large=True``: when it holds more than two)."""

    def __init__(self, *, large: bool = False) -> None:
        super().__init__()
        self.net, self.large = _small(), large

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if torch.onnx.is_in_onnx_export():
            images_in_batch = torch.ones_like(x[:, 0, 0, 0]).sum()  # traced from the dynamic batch axis
            wrong = images_in_batch > 2 if self.large else images_in_batch == 1
            y = y + wrong.float() * 0.01
        return y


@pytest.mark.parametrize("large", [False, True], ids=["batch-1", "large-batch"])
def test_a_graph_wrong_only_at_batch_1_or_only_at_the_large_batch_is_refused(
    tmp_path: Path, large: bool
) -> None:
    """Bugs caught: the batch-1 comparisons, or the large batch's, run but dropped."""
    with pytest.raises(ExportError, match=r"max abs diff 0\.01"):
        export_onnx(
            _WrongAtBatch1WhenExported(large=large).eval(),
            path=tmp_path / "m.onnx",
            metadata=metadata(),
            validation_images=images(4),
            exporter="torchscript",
        )
