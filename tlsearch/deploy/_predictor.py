"""Predict with an exported tlsearch model: onnxruntime + numpy + pillow, never torch.

Labels, task and preprocessing come from the model's own metadata; images are prepared with
:mod:`tlsearch.preprocessing`, the very code that made the training cache, so deploy sees the
pixels training saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from tlsearch.artifacts import redact_url
from tlsearch.deploy._checks import check_graph
from tlsearch.deploy._format import INPUT_RAW, ModelFormatError, read_metadata
from tlsearch.deploy._labels import label_sets, thresholds_of
from tlsearch.deploy._provenance import Provenance
from tlsearch.deploy._remote import fetch_model, is_remote, local_path
from tlsearch.preprocessing import (
    DataConfig,
    check_image_size,
    display_path,
    load_rgb,
    normalize,
    resize_center_crop,
)

Source = str | Path | np.ndarray


@dataclass
class Prediction:
    """The result for one input. ``error`` is set (and the rest empty) when it could not be predicted.

    Classification: ``top_k`` holds ``(label, class index, probability)``, most probable first.
    Regression: ``values`` holds the model's outputs, named by ``names``.
    Multilabel: ``labels`` holds the predicted label set, ``(label, index, probability)`` of each
    label at or above its threshold (most probable first, possibly empty: "none of these"), and
    ``top_k`` the ``top_k`` most probable labels whatever their thresholds. A binary classifier
    exported with a tuned threshold (``export.target_precision``/``target_recall``) also sets
    ``labels``: the one class decided at that threshold.
    """

    source: str
    top_k: list[tuple[str, int, float]] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    error: str | None = None
    labels: list[tuple[str, int, float]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "ok": self.ok}
        if self.error is not None:
            d["error"] = self.error
        elif self.labels is not None:
            d["labels"] = [{"label": lab, "index": i, "probability": p} for lab, i, p in self.labels]
            d["top_k"] = [{"label": lab, "index": i, "probability": p} for lab, i, p in self.top_k]
        elif self.top_k:
            d["top_k"] = [{"label": lab, "index": i, "probability": p} for lab, i, p in self.top_k]
        else:
            d["values"] = dict(zip(self.names, self.values, strict=True))
        return d


class Predictor:
    """An exported tlsearch model ready to predict.

    >>> predictor = Predictor("model.onnx")                        # doctest: +SKIP
    >>> predictor.predict(["cat.jpg", "dog.png"], top_k=3)          # doctest: +SKIP
    >>> Predictor("s3://bucket/studies/pets/model.onnx")           # doctest: +SKIP

    ``path`` is a local file (``file:///…`` too) or the URL of an exported model in an object
    store (``s3://…``, ``gs://…``; a URL without a ``.onnx`` name means its ``model.onnx``), which
    is downloaded into ``cache_dir`` (default ``~/.cache/tlsearch/models``) unless the cache holds
    the store's current version already (:func:`tlsearch.deploy.fetch_model`); ``url`` is then that
    URL and ``path`` the cached file. A store that does not answer, has no such model or refuses the
    credentials raises :class:`ModelFetchError`.

    Raises :class:`ModelFormatError` when ``path`` is not an ONNX model exported by tlsearch, or
    when its metadata is out of bounds or disagrees with the graph (labels for another number of
    outputs, an input size or input format the graph does not take; see :mod:`._checks`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        #: the store URL the model came from (redacted), or None for a local file
        self.url: str | None = None
        if is_remote(path):
            self.url = redact_url(str(path))
            self.path = fetch_model(str(path), cache_dir=cache_dir)
        else:
            self.path = local_path(path)
        shown = repr(self.url or str(self.path))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelFormatError(f"cannot load {shown} as an ONNX model: {exc}") from None
        meta = read_metadata(self.session.get_modelmeta().custom_metadata_map, source=shown)
        self.metadata: dict[str, Any] = meta
        self.task: str = meta["task"]
        self.data_config = DataConfig.from_dict(meta["data_config"])
        self.raw_input = meta.get("input_format") == INPUT_RAW
        #: what made the model: the backbone's concrete model, the plugins' packages and versions
        self.provenance = Provenance.from_metadata(meta, source=shown)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        n = check_graph(meta, inputs, outputs, source=shown)
        self.input_name = inputs[0].name
        labels = meta.get("labels")
        if labels is None and isinstance(n, int):
            labels = [str(i) for i in range(n)] if self.task != "regression" else self._value_names(n)
        self.labels: list[str] = list(labels or [])
        self._unscale = _output_scale(meta)
        #: multilabel: the per-label decision thresholds the export tuned (metadata ``thresholds``);
        #: binary classification with a tuned threshold: one, for ``positive_label``
        self.thresholds = thresholds_of(meta, len(self.labels)) if self.task == "multilabel" else None
        self.positive_label: str | None = meta.get("positive_label") if meta.get("thresholds") else None
        if self.positive_label is not None:
            self.thresholds = thresholds_of(meta, 1)

    @staticmethod
    def _value_names(n: int) -> list[str]:
        return ["value"] if n == 1 else [f"value_{i}" for i in range(n)]

    def prepare(self, source: Source) -> np.ndarray:
        """One input as the model takes it: HWC uint8 of the eval size, or the raw RGB image when the
        preprocessing is in the graph. Raises ``ValueError`` naming the source when it is no image."""
        if isinstance(source, np.ndarray):
            if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
                raise ValueError(
                    f"an array input must be an HWC uint8 RGB image, got {source.dtype} {source.shape}"
                )
            try:
                check_image_size(source.shape[1], source.shape[0])
            except ValueError as exc:
                raise ValueError(f"array input: {exc}") from None
            image = Image.fromarray(source)
        else:
            image = load_rgb(source)
        if self.raw_input:
            return np.asarray(image, dtype=np.uint8)
        return resize_center_crop(image, self.data_config)

    def predict(
        self,
        sources: Sequence[Source],
        *,
        top_k: int = 5,
        batch_size: int = 16,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Prediction]:
        """Predict every source (a file path or an HWC uint8 RGB array), in order, one result each.

        A source that cannot be read (not an image, truncated, or a size past the bounds of
        :func:`tlsearch.preprocessing.check_image_size`, checked before decoding) does not raise:
        it gives a :class:`Prediction` with ``error`` set, naming it, and the others are still
        predicted; check ``ok`` on each result (``tlsearch predict`` prints the good ones, then
        exits 1). ``on_progress(n)`` is called after each ``n`` sources handled.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 but got {top_k}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 but got {batch_size}")
        results: list[Prediction] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            names = [_name(s, start + i) for i, s in enumerate(chunk)]
            prepared: list[tuple[int, np.ndarray]] = []
            batch_results = [Prediction(source=n) for n in names]
            for i, source in enumerate(chunk):
                try:
                    prepared.append((i, self.prepare(source)))
                except (ValueError, OSError) as exc:
                    batch_results[i].error = str(exc)
                except MemoryError:
                    batch_results[i].error = f"cannot prepare {names[i]!r}: out of memory"
            for group in self._groups(prepared):
                outputs = self._run(np.stack([a for _, a in group]))
                for (i, _), row in zip(group, outputs, strict=True):
                    self._fill(batch_results[i], row, top_k)
            results.extend(batch_results)
            if on_progress is not None:
                on_progress(len(chunk))
        return results

    def _groups(self, prepared: list[tuple[int, np.ndarray]]) -> list[list[tuple[int, np.ndarray]]]:
        """Same-shape runs of inputs (raw images of different sizes cannot share a batch)."""
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
        for item in prepared:
            groups.setdefault(item[1].shape, []).append(item)
        return list(groups.values())

    def _run(self, batch: np.ndarray) -> np.ndarray:
        x = batch if self.raw_input else normalize(batch, self.data_config)
        out = np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float64)
        if self._unscale is not None:
            mean, std = self._unscale
            out = out * std + mean
        return out

    def _fill(self, result: Prediction, row: np.ndarray, top_k: int) -> None:
        if self.task == "multilabel":  # the graph outputs sigmoid probabilities
            assert self.thresholds is not None
            order = np.argsort(-row, kind="stable")
            chosen = label_sets(row[None, :], self.thresholds)[0]
            result.labels = [(self._label(int(i)), int(i), float(row[i])) for i in order if chosen[i]]
            result.top_k = [(self._label(int(i)), int(i), float(row[i])) for i in order[:top_k]]
        elif self.task == "classification":
            exp = np.exp(row - row.max())
            probs = exp / exp.sum()
            order = np.argsort(-probs, kind="stable")[:top_k]
            result.top_k = [(self._label(int(i)), int(i), float(probs[i])) for i in order]
            if self.positive_label is not None and self.thresholds is not None and len(probs) == 2:
                # binary with a tuned threshold: the decided class, positive at or above it
                positive = self.labels.index(self.positive_label)
                decided = positive if probs[positive] >= self.thresholds[0] else 1 - positive
                result.labels = [(self._label(decided), decided, float(probs[decided]))]
        else:
            result.values = [float(v) for v in row]
            result.names = self.labels if len(self.labels) == len(row) else self._value_names(len(row))

    def _label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)


def _output_scale(meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The regression target scale Predictor must apply itself: none when the graph already outputs
    original units (``target_scale.in_graph``, what tlsearch exports) or when there is no scale."""
    scale = meta.get("target_scale")
    if not isinstance(scale, dict) or scale.get("in_graph", False):
        return None
    return np.asarray(scale["mean"], dtype=np.float64), np.asarray(scale["std"], dtype=np.float64)


def _name(source: Source, index: int) -> str:
    return f"<array {index}>" if isinstance(source, np.ndarray) else display_path(source)


__all__ = ["ModelFormatError", "Prediction", "Predictor"]
