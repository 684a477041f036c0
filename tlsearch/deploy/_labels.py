"""Multi-label decisions and scores with numpy alone (deploy and INT8 quantisation are torch-free).

A label is predicted when its probability is **at or above** its threshold, the rule of
:mod:`tlsearch.train.thresholds` that tuned it; :func:`mean_average_precision` is
:func:`tlsearch.train.metrics.average_precision` averaged over the labels with a positive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: what a label without a tuned threshold is compared with
DEFAULT_THRESHOLD = 0.5


def thresholds_of(metadata: Mapping[str, Any], n: int) -> np.ndarray:
    """The per-label thresholds ``(n,)`` a multi-label model's metadata carries (``thresholds``),
    :data:`DEFAULT_THRESHOLD` for each when it has none."""
    values = metadata.get("thresholds")
    if values is None:
        return np.full(n, DEFAULT_THRESHOLD)
    return np.asarray(values, dtype=np.float64)


def label_sets(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``(N, L)`` booleans: which labels each row predicts."""
    return np.asarray(probabilities) >= np.asarray(thresholds)[None, :]


def mean_average_precision(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """mAP of ``probabilities`` ``(N, L)`` against 0/1 ``targets``: the mean, over labels with a
    positive, of scikit-learn's average precision (tied scores one cut); 0 when no label has one."""
    scores = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(targets, dtype=np.float64)
    aps: list[float] = []
    for j in range(scores.shape[1]):
        positives = truth[:, j].sum()
        if positives == 0:
            continue
        order = np.argsort(-scores[:, j], kind="stable")
        ranked, hits = scores[order, j], truth[order, j]
        tp = np.cumsum(hits)
        cut = np.append(ranked[:-1] > ranked[1:], True)
        precision = (tp / np.arange(1, len(ranked) + 1))[cut]
        recall = (tp / positives)[cut]
        aps.append(float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision)))
    return float(np.mean(aps)) if aps else 0.0


def check_thresholds(values: Any, *, labels: Sequence[str] | None, source: str) -> None:
    """Refuse (``ValueError``) ``thresholds`` metadata that is not one number in [0, 1] per label."""
    ok = isinstance(values, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in values
    )
    if not ok or (labels is not None and len(values) != len(labels)):
        raise ValueError(
            f"{source}: thresholds must be a list of one number in [0, 1] per label "
            f"({len(labels) if labels is not None else '?'}), got {values!r}"
        )
