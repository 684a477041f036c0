"""Export a model to one self-describing ONNX file, and prove it equal to PyTorch before keeping it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import torch
from torch import nn

from tlsearch import __version__
from tlsearch.deploy._format import (
    FORMAT_VERSION,
    INPUT_NORMALIZED,
    INPUT_RAW,
    ModelFormatError,
    metadata_props,
    validate_metadata,
)
from tlsearch.errors import ExportError
from tlsearch.export._messages import error_text
from tlsearch.export._parity import Comparison, cpu_session, merge, run_batched
from tlsearch.export._parity import compare as _compare
from tlsearch.export._preprocessing import check_preprocessing, embed_preprocessing
from tlsearch.export._units import OriginalUnits, Probabilities, scale_metadata
from tlsearch.preprocessing import DataConfig, normalize
from tlsearch.train.targets import TargetScale

EXPORTERS = ("auto", "dynamo", "torchscript")
#: the graph output's name by task: a multi-label file outputs sigmoid probabilities, not logits
OUTPUT_NAMES = {"classification": "logits", "regression": "values", "multilabel": "probabilities"}
INPUT_NAME = "input"
_STANDARD_DOMAINS = ("", "ai.onnx")
_TORCHSCRIPT_OPSET = 18


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how it was verified.

    ``max_abs_diff`` and ``top1_agreement`` (None for regression) are the worst over every batch
    checked; ``exporter`` is ``"dynamo"`` or ``"torchscript"`` (the fallback, with
    ``fallback_reason``). ``preprocessing`` holds the pixel and output figures of the check of the
    in-graph preprocessing, when the model has it.
    """

    path: Path
    model_json: Path
    max_abs_diff: float
    top1_agreement: float | None
    batch_sizes_checked: tuple[int, ...]
    size_bytes: int
    sha256: str
    exporter: str
    opset: int
    input_format: str
    num_outputs: int
    tolerance: float
    seconds: float
    fallback_reason: str | None = None
    preprocessing: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"], d["model_json"] = str(self.path), str(self.model_json)
        d["batch_sizes_checked"] = list(self.batch_sizes_checked)
        return d


def export_onnx(
    model: nn.Module,
    *,
    path: str | Path,
    metadata: Mapping[str, Any],
    validation_images: np.ndarray,
    tolerance: float = 1e-4,
    opset: int | None = None,
    exporter: str = "auto",
    embed_preprocessing: bool = False,
    raw_images: Sequence[np.ndarray] | None = None,
    max_batch: int = 16,
    target_scale: TargetScale | None = None,
) -> ExportReport:
    """Export ``model`` to a single ``.onnx`` file at ``path`` with a dynamic batch axis and metadata,
    plus a readable ``model.json`` beside it (``path`` with suffix ``.json``).

    ``model`` maps a normalised NCHW float batch to ``(N, outputs)`` and must be in eval mode.
    ``validation_images`` is ``(N, S, S, 3)`` uint8, already eval-preprocessed with
    :func:`tlsearch.preprocessing.prepare_image` at ``S = data_config.input_size``.
    ``metadata`` needs ``task`` and ``data_config`` (taken from ``model.data_config`` when absent,
    as a :class:`~tlsearch.kinds.TransferModel` has); ``labels``, the trial's choices, the metric
    and score are carried as given.

    Checks, in order: ``onnx.checker`` (``full_check``), standard operators only, then parity with
    PyTorch in onnxruntime at batch 1 and at a batch of up to ``max_batch`` images: the largest
    absolute output difference must be ≤ ``tolerance × max(1, largest |output|)`` (see
    :func:`parity_bound`: the absolute tolerance for outputs within ±1) and, for classification,
    every top-1 must agree. ``exporter="auto"`` tries the dynamo exporter and, when it raises or fails a check, the
    TorchScript one (checked the same way).

    ``embed_preprocessing=True`` writes a model taking raw RGB images (uint8 NHWC, any size, see
    :mod:`tlsearch.export._preprocessing`), verified against the plain one on ``raw_images``
    (default: ``validation_images`` themselves).

    ``target_scale`` (regression: the scale the model's outputs were standardised with) is applied
    in the graph, so the file outputs the targets' original units, and recorded in the metadata as
    ``target_scale`` (``mean``, ``std``, ``in_graph: true``); parity is checked on those outputs.

    Raises :class:`ExportError` with the measured figures when a check fails; then no file is
    written at ``path`` (everything is built in a temporary folder and moved in place at the end).
    """
    started = time.perf_counter()
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter {exporter!r} is not valid; valid: {', '.join(EXPORTERS)}")
    if tolerance < 0:
        raise ExportError(f"tolerance must be >= 0 but got {tolerance}")
    if max_batch < 2:
        raise ExportError(f"max_batch must be >= 2 but got {max_batch}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ExportError(f"the export path must end in .onnx, got {str(path)!r}")
    if target_scale is not None:
        if metadata.get("task") != "regression":
            raise ExportError(f"target_scale is for task regression, not {metadata.get('task')!r}")
        model = OriginalUnits(model, target_scale).eval()
        metadata = {**metadata, "target_scale": scale_metadata(target_scale)}
    if metadata.get("task") == "multilabel":  # the file outputs probabilities (metadata: outputs)
        model = Probabilities(model).eval()
        metadata = {**metadata, "outputs": "sigmoid_probabilities"}
    meta = _complete_metadata(model, metadata, embed_preprocessing=embed_preprocessing)
    config = DataConfig.from_dict(meta["data_config"])
    _check_eval_mode(model)
    images = _check_images(validation_images, config)
    x = normalize(images, config)
    reference = _torch_outputs(model, x)
    num_outputs = _check_outputs(reference, meta)
    meta["num_outputs"] = num_outputs

    path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".tlsearch-export-", dir=path.parent))
    try:
        order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
        failures: list[str] = []
        for name in order:
            try:
                proto, parity, batches = _export_and_check(
                    model,
                    x=x,
                    reference=reference,
                    meta=meta,
                    exporter=name,
                    opset=opset,
                    tolerance=tolerance,
                    max_batch=max_batch,
                    file=workdir / f"{name}.onnx",
                )
                break
            except ExportError as exc:
                failures.append(f"{name} exporter: {exc}")
        else:
            raise ExportError("; ".join(failures))
        plain_file = workdir / f"{name}.onnx"
        final_file, preprocessing = plain_file, None
        if embed_preprocessing:
            final_file = workdir / "raw_input.onnx"
            preprocessing = _embed_and_check(
                proto,
                plain_file=plain_file,
                out=final_file,
                config=config,
                meta=meta,
                raw_images=raw_images,
                fallback_images=images,
            )
        digest = hashlib.sha256(final_file.read_bytes()).hexdigest()
        report = ExportReport(
            path=path,
            model_json=path.with_suffix(".json"),
            max_abs_diff=parity.max_abs_diff,
            top1_agreement=parity.top1_agreement,
            batch_sizes_checked=tuple(batches),
            size_bytes=final_file.stat().st_size,
            sha256=digest,
            exporter=name,
            opset=_opset(proto),
            input_format=meta["input_format"],
            num_outputs=num_outputs,
            tolerance=tolerance,
            seconds=time.perf_counter() - started,
            fallback_reason="; ".join(failures) or None,
            preprocessing=preprocessing,
        )
        json_file = workdir / "model.json"
        json_file.write_text(json.dumps(_model_json(meta, report), indent=2, sort_keys=False) + "\n")
        os.replace(final_file, path)
        os.replace(json_file, report.model_json)
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _complete_metadata(
    model: nn.Module, metadata: Mapping[str, Any], *, embed_preprocessing: bool
) -> dict[str, Any]:
    meta = dict(metadata)
    model_config = getattr(model, "data_config", None)
    if "data_config" not in meta and isinstance(model_config, DataConfig):
        meta["data_config"] = model_config.to_dict()
    elif isinstance(meta.get("data_config"), DataConfig):
        meta["data_config"] = meta["data_config"].to_dict()
    meta.setdefault("labels", None)
    meta.setdefault("tlsearch_version", __version__)
    meta["format_version"] = FORMAT_VERSION
    meta["input_format"] = INPUT_RAW if embed_preprocessing else INPUT_NORMALIZED
    try:
        return validate_metadata(meta, source="export metadata")
    except ModelFormatError as exc:
        raise ExportError(str(exc)) from None


def _check_eval_mode(model: nn.Module) -> None:
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ExportError(
            f"the model is in training mode ({len(training)} module(s), e.g. {training[:3]}); "
            "call model.eval() before exporting, so dropout and batch norm behave as at inference"
        )


def _check_images(images: np.ndarray, config: DataConfig) -> np.ndarray:
    images = np.asarray(images)
    s = config.input_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3) or len(images) == 0:
        raise ExportError(
            f"validation_images must be a non-empty (N, {s}, {s}, 3) uint8 array (prepare_image output at "
            f"data_config.input_size={s}), got {images.dtype} {images.shape}"
        )
    return images


def _torch_outputs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        out = model(torch.from_numpy(x))
    if not isinstance(out, torch.Tensor):
        raise ExportError(f"the model must return one tensor (N, outputs), got {type(out).__name__}")
    return out.float().cpu().numpy()


def _check_outputs(reference: np.ndarray, meta: dict[str, Any]) -> int:
    if reference.ndim != 2:
        raise ExportError(f"the model must return (N, outputs), got shape {reference.shape}")
    n = int(reference.shape[1])
    labels = meta.get("labels")
    if labels is not None and len(labels) != n:
        raise ExportError(f"metadata has {len(labels)} labels but the model has {n} outputs")
    return n


def _export_and_check(
    model: nn.Module,
    *,
    x: np.ndarray,
    reference: np.ndarray,
    meta: dict[str, Any],
    exporter: str,
    opset: int | None,
    tolerance: float,
    max_batch: int,
    file: Path,
) -> tuple[onnx.ModelProto, Comparison, list[int]]:
    # Batch 2 at least: torch.export specialises a dimension whose example size is 1.
    sample = torch.from_numpy(x[:2] if len(x) >= 2 else np.concatenate([x, x]))
    output_name = OUTPUT_NAMES[meta["task"]]
    try:
        _run_exporter(model, sample, file=file, exporter=exporter, opset=opset, output_name=output_name)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {error_text(exc)}") from None
    proto = _finalise(onnx.load(str(file)), meta)
    onnx.save_model(proto, str(file), save_as_external_data=False)
    _checker(file)
    bound = parity_bound(tolerance, reference)
    parity, batches = _parity(
        file, x=x, reference=reference, task=meta["task"], max_batch=max_batch, meta=meta, margin=bound
    )
    if parity.max_abs_diff > bound or (parity.top1_agreement is not None and parity.top1_agreement < 1.0):
        raise ExportError(
            f"onnxruntime disagrees with PyTorch on the validation images: {parity.describe()} "
            f"(allowed: {bound:.3g} = tolerance {tolerance:g} × max(1, largest |output| "
            f"{float(np.max(np.abs(reference))) if reference.size else 0.0:.3g}); "
            f"{'label sets at the thresholds' if meta['task'] == 'multilabel' else 'top-1'} must agree "
            f"on every image; batches {batches})"
        )
    return proto, parity, batches


def parity_bound(tolerance: float, reference: np.ndarray) -> float:
    """The largest output difference accepted: ``tolerance`` for outputs within ±1, scaled by the
    largest output magnitude beyond that.

    float32 carries about 7 significant digits, so two correct implementations of a network whose
    logits reach ±70 differ by ~1e-4 in absolute terms (measured: 1.7e-4 between PyTorch and
    onnxruntime, 3.6e-5 between PyTorch at batch 1 and batch 16, on the quickstart's model). An
    absolute 1e-4 there would refuse correct exports; a wrong graph is off by orders more.
    """
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return tolerance * max(1.0, scale)


def _run_exporter(
    model: nn.Module, sample: torch.Tensor, *, file: Path, exporter: str, opset: int | None, output_name: str
) -> None:
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.inference_mode(False):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(
                model,
                (sample,),
                str(file),
                dynamo=True,
                external_data=False,
                input_names=[INPUT_NAME],
                output_names=[output_name],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                verbose=False,
            )
        else:
            torch.onnx.export(
                model,
                (sample,),
                str(file),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[output_name],
                dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}},
                opset_version=opset or _TORCHSCRIPT_OPSET,
            )


def _finalise(proto: onnx.ModelProto, meta: dict[str, Any]) -> onnx.ModelProto:
    """Inline local functions, refuse non-standard operators, write the metadata."""
    if len(proto.functions):
        proto = onnx.inliner.inline_local_functions(proto)
    custom = sorted(
        {f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in _STANDARD_DOMAINS}
        | {f"{o.domain} (opset import)" for o in proto.opset_import if o.domain not in _STANDARD_DOMAINS}
    )
    if custom:
        raise ExportError(f"the exported graph uses non-standard operators: {', '.join(custom[:10])}")
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata_props(meta))
    proto.producer_name, proto.producer_version = "tlsearch", str(meta["tlsearch_version"])
    proto.doc_string = (
        f"tlsearch {meta['task']} model; metadata key 'tlsearch' holds labels and preprocessing"
    )
    return proto


def _checker(file: Path) -> None:
    try:
        onnx.checker.check_model(str(file), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise ExportError(
            f"onnx.checker rejected the exported model: {type(exc).__name__}: {error_text(exc)}"
        ) from None


def _parity(
    file: Path,
    *,
    x: np.ndarray,
    reference: np.ndarray,
    task: str,
    max_batch: int,
    meta: dict[str, Any] | None = None,
    margin: float = 0.0,
) -> tuple[Comparison, list[int]]:
    session = cpu_session(file)
    thresholds = None
    if task == "multilabel":
        from tlsearch.deploy._labels import thresholds_of

        thresholds = thresholds_of(meta or {}, reference.shape[1])
    compare = partial(_compare, thresholds=thresholds, margin=margin)
    comparisons, batches = [], set()
    for i in range(min(len(x), 2)):  # batch 1
        out = run_batched(session, x[i : i + 1], batch_size=1)
        comparisons.append(compare(reference[i : i + 1], out, task=task, what="batch 1"))
        batches.add(1)
    if len(x) >= 2:
        big = min(len(x), max_batch)
        out = run_batched(session, x, batch_size=big)
        comparisons.append(compare(reference, out, task=task, what=f"batch {big}"))
        batches.update({big, len(x) % big or big})
    else:  # one image: still prove the batch axis is dynamic
        out = run_batched(session, np.concatenate([x, x]), batch_size=2)
        comparisons.append(compare(np.concatenate([reference, reference]), out, task=task, what="batch 2"))
        batches.add(2)
    return merge(comparisons), sorted(batches)


def _embed_and_check(
    plain: onnx.ModelProto,
    *,
    plain_file: Path,
    out: Path,
    config: DataConfig,
    meta: dict[str, Any],
    raw_images: Sequence[np.ndarray] | None,
    fallback_images: np.ndarray,
) -> dict[str, Any]:
    raw_model = embed_preprocessing(plain, config)
    del raw_model.metadata_props[:]
    onnx.helper.set_model_props(raw_model, metadata_props(meta))
    onnx.save_model(raw_model, str(out), save_as_external_data=False)
    _checker(out)
    images = list(raw_images) if raw_images is not None else list(fallback_images)
    return check_preprocessing(
        raw_model, plain_session=cpu_session(plain_file), raw_images=images, config=config, task=meta["task"]
    )


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in _STANDARD_DOMAINS), 0)


def _model_json(meta: dict[str, Any], report: ExportReport) -> dict[str, Any]:
    return {
        "model_file": report.path.name,
        "sha256": report.sha256,
        "size_bytes": report.size_bytes,
        "metadata": meta,
        "verification": {
            "exporter": report.exporter,
            "opset": report.opset,
            "max_abs_diff": report.max_abs_diff,
            "top1_agreement": report.top1_agreement,
            "tolerance": report.tolerance,
            "batch_sizes_checked": list(report.batch_sizes_checked),
            "fallback_reason": report.fallback_reason,
            "preprocessing": report.preprocessing,
        },
    }
