"""Numbers, not trust: run an ONNX model in onnxruntime and compare it with reference outputs. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tlsearch.errors import ExportError


def cpu_session(path: str | Path | bytes, *, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session with all graph optimisations (what deployment uses)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = path if isinstance(path, bytes) else str(path)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(
            f"onnxruntime cannot load the exported model: {type(exc).__name__}: {exc}"
        ) from None


def run_batched(session: ort.InferenceSession, x: np.ndarray, *, batch_size: int) -> np.ndarray:
    """Outputs of the session's first output for ``x`` in batches of ``batch_size``."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


@dataclass(frozen=True)
class Comparison:
    """How far ``actual`` is from ``reference``: the largest absolute difference and, for
    classification, the fraction of rows whose arg-max agrees; for multilabel, the fraction of rows
    whose thresholded label sets agree (None for regression)."""

    max_abs_diff: float
    top1_agreement: float | None
    agreement_kind: str = "top-1"

    def describe(self) -> str:
        text = f"max abs diff {self.max_abs_diff:.3g}"
        if self.top1_agreement is not None:
            text += f", {self.agreement_kind} agreement {self.top1_agreement:.1%}"
        return text


def compare(
    reference: np.ndarray,
    actual: np.ndarray,
    *,
    task: str,
    what: str,
    thresholds: np.ndarray | None = None,
    margin: float = 0.0,
) -> Comparison:
    """Compare two ``(N, outputs)`` arrays; a shape mismatch or a non-finite value is an ExportError.

    Multilabel outputs are probabilities: the label sets at ``thresholds`` (default 0.5 each) must
    agree, except for a score within ``margin`` of its threshold in the reference, which the
    tolerated difference may legitimately carry across (a top-1 check has no meaning there)."""
    if reference.shape != actual.shape:
        raise ExportError(
            f"{what}: output shape {actual.shape} differs from the reference's {reference.shape}"
        )
    if not np.all(np.isfinite(actual)):
        raise ExportError(f"{what}: the outputs contain NaN or infinity")
    diff = (
        float(np.max(np.abs(reference.astype(np.float64) - actual.astype(np.float64))))
        if actual.size
        else 0.0
    )
    agreement = None
    if task == "classification":
        agreement = float(np.mean(reference.argmax(axis=1) == actual.argmax(axis=1)))
    elif task == "multilabel":
        from tlsearch.deploy._labels import DEFAULT_THRESHOLD, label_sets

        cut = np.full(reference.shape[1], DEFAULT_THRESHOLD) if thresholds is None else thresholds
        same = label_sets(reference, cut) == label_sets(actual, cut)
        near = np.abs(reference - cut[None, :]) <= margin
        agreement = float(np.mean(np.all(same | near, axis=1))) if len(reference) else 1.0
        return Comparison(diff, agreement, "label-set")
    return Comparison(diff, agreement)


def merge(comparisons: list[Comparison]) -> Comparison:
    """The worst of several comparisons."""
    agreements = [c.top1_agreement for c in comparisons if c.top1_agreement is not None]
    return Comparison(
        max(c.max_abs_diff for c in comparisons),
        min(agreements) if agreements else None,
        comparisons[0].agreement_kind if comparisons else "top-1",
    )
