"""The held-out test score: the exported model — the ONNX file through onnxruntime, as it ships —
scored once, after the search, on the study's test split (``data.test`` or ``data.test_fraction``).

No trial sees a test image: :func:`tlsearch.data.load_all_splits` carves or reads the test split
apart from train and val, and only the export reads it. The validation score of the best trial is
optimistic, since it is the maximum over every trial scored on the same images; the test score is
not, since nothing was chosen on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlsearch.data import ImageList
from tlsearch.errors import DataError
from tlsearch.preprocessing import display_path
from tlsearch.train.metrics import evaluate_outputs

__all__ = ["score_exported"]


def score_exported(path: str | Path, test: ImageList, *, task: str) -> dict[str, Any]:
    """The metrics of the exported model at ``path`` on the ``test`` images, predicted with
    :class:`tlsearch.deploy.Predictor` (its own decoding and preprocessing, as a user's call)::

        {"images": 40, "metrics": {"accuracy": 0.9}, "skipped": 0, "skipped_examples": []}

    An image the predictor cannot read is left out and counted in ``skipped``; none readable is a
    :class:`~tlsearch.errors.DataError`."""
    from tlsearch.deploy import Predictor

    predictor = Predictor(path)
    width = len(predictor.labels) or 1
    results = predictor.predict(list(test.paths), top_k=width)
    kept = [i for i, r in enumerate(results) if r.ok]
    skipped = [display_path(test.paths[i]) for i, r in enumerate(results) if not r.ok]
    if not kept:
        raise DataError(
            f"no test image could be read ({len(test)} tried, e.g. {skipped[:1]}): the test score needs images"
        )
    if task == "multilabel":  # at the exported thresholds: a test image never tunes one
        from tlsearch.train.metrics import multilabel_metrics

        scores = np.zeros((len(kept), width), dtype=np.float32)
        for row, i in enumerate(kept):
            for _, index, probability in results[i].top_k:
                scores[row, index] = probability
        assert predictor.thresholds is not None
        metrics = multilabel_metrics(
            torch.from_numpy(scores),
            torch.tensor([test.targets[i] for i in kept], dtype=torch.float32),
            thresholds=torch.from_numpy(predictor.thresholds.astype(np.float32)),
        )
        return {
            "images": len(kept),
            "metrics": metrics,
            "skipped": len(skipped),
            "skipped_examples": skipped[:5],
        }
    if task == "classification":
        outputs = np.zeros((len(kept), width), dtype=np.float32)
        for row, i in enumerate(kept):
            for _, index, probability in results[i].top_k:
                outputs[row, index] = probability
        targets = torch.tensor([test.targets[i] for i in kept])
    else:
        outputs = np.asarray([results[i].values for i in kept], dtype=np.float32)
        targets = torch.tensor([test.targets[i] for i in kept], dtype=torch.float32)
    metrics = evaluate_outputs(torch.from_numpy(outputs), targets, task=task)
    return {
        "images": len(kept),
        "metrics": metrics,
        "skipped": len(skipped),
        "skipped_examples": skipped[:5],
    }
