"""Per-class results of one classification evaluation: what was confused with what, and which
validation images the model got most wrong.

The trainer keeps these for the epoch whose weights a trial keeps (``FitResult.class_results``;
its counts also go to ``FitResult.extras["per_class_counts"]``) and the objective records them as the trial's
``per_class``, ``confusion`` and ``worst_images`` user attributes, which ``tlsearch status`` and
the HTML report read.

``confusion`` is recorded as the full C×C count matrix (rows: true class, columns: predicted) up to
:data:`MAX_DENSE_CLASSES` classes. Beyond that, a matrix of 10,000+ cells in every trial's attrs
would bloat the storage and nobody can read it; the record is then
``{"classes": C, "support": [...], "correct": [...], "cells": [[true, predicted, n], ...],
"note": "..."}`` with the :data:`TOP_CONFUSED_CELLS` largest off-diagonal cells, and says so in
``note``. :func:`tlsearch.report._classes.confused_pairs` reads either form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlsearch.train.metrics import per_class_counts

#: how many validation images a trial records as its worst (lowest probability of the true class)
WORST_IMAGES = 12
#: up to this many classes the full confusion matrix is recorded
MAX_DENSE_CLASSES = 100
#: with more classes, only this many of the largest off-diagonal cells are recorded
TOP_CONFUSED_CELLS = 200


@dataclass(frozen=True)
class ClassResults:
    """One evaluation's per-class results, on the CPU: ``counts`` ``(C, 3)`` (true positives,
    support, predicted count: :func:`~tlsearch.train.metrics.per_class_counts`), ``confusion``
    ``(C, C)`` counts, and ``worst``: ``(index, true, predicted, probability of the true class)``
    of the lowest-scored validation images, worst first (indices into the evaluated images)."""

    counts: torch.Tensor
    confusion: torch.Tensor
    worst: list[tuple[int, int, int, float]]

    def attrs(self, *, paths: Sequence[Path], labels: Sequence[str], root: Path | None) -> dict[str, Any]:
        """The trial's ``confusion`` and ``worst_images`` user attributes (JSON-ready); ``paths``:
        the evaluated images' files, ``root``: the data root the recorded paths are relative to."""
        return {
            "confusion": confusion_record(self.confusion),
            "worst_images": worst_image_rows(self.worst, paths=paths, labels=labels, root=root),
        }


def class_results(outputs: torch.Tensor, targets: torch.Tensor, *, worst: int = WORST_IMAGES) -> ClassResults:
    """The per-class results of logits ``outputs`` ``(N, C)`` against class indices ``targets``."""
    outputs = outputs.detach().float()
    targets = targets.detach().long().view(-1)
    classes = outputs.shape[1]
    predicted = outputs.argmax(dim=1)
    counts = per_class_counts(predicted, targets, classes=classes)
    confusion = confusion_matrix(predicted, targets, classes=classes)
    true_probability = torch.softmax(outputs, dim=1).gather(1, targets[:, None]).view(-1)
    k = min(worst, len(targets))
    # stable order: ties (e.g. several images at probability 0) keep their validation order
    order = torch.sort(true_probability, stable=True).indices[:k]
    rows = torch.stack([order, targets[order], predicted[order]], dim=1).cpu().tolist()
    probabilities = true_probability[order].cpu().tolist()
    return ClassResults(
        counts.cpu(),
        confusion.cpu(),
        [(int(i), int(t), int(p), float(q)) for (i, t, p), q in zip(rows, probabilities, strict=True)],
    )


def confusion_matrix(predicted: torch.Tensor, targets: torch.Tensor, *, classes: int) -> torch.Tensor:
    """``(C, C)`` counts: row = true class, column = predicted class (scikit-learn's layout)."""
    flat = targets.long() * classes + predicted.long()
    return torch.bincount(flat, minlength=classes * classes).view(classes, classes)


def confusion_record(confusion: torch.Tensor) -> list[list[int]] | dict[str, Any]:
    """The stored form of a confusion matrix (see the module doc): the matrix itself up to
    :data:`MAX_DENSE_CLASSES` classes, else its largest off-diagonal cells with a note."""
    classes = confusion.shape[0]
    if classes <= MAX_DENSE_CLASSES:
        return confusion.int().tolist()
    off = confusion.clone()
    off.fill_diagonal_(0)
    flat = off.view(-1)
    nonzero = int((flat > 0).sum())
    k = min(TOP_CONFUSED_CELLS, nonzero)
    values, where = torch.topk(flat, k) if k else (flat[:0], flat[:0])
    cells = [[int(w) // classes, int(w) % classes, int(v)] for v, w in zip(values, where, strict=True)]
    return {
        "classes": classes,
        "support": confusion.sum(dim=1).int().tolist(),
        "correct": confusion.diagonal().int().tolist(),
        "cells": cells,
        "note": (
            f"{classes} classes: only the {len(cells)} largest of {nonzero} confused cells are "
            f"recorded (the full matrix is kept up to {MAX_DENSE_CLASSES} classes)"
        ),
    }


def worst_image_rows(
    worst: Sequence[Sequence[Any]], *, paths: Sequence[Path], labels: Sequence[str], root: Path | None
) -> list[dict[str, Any]]:
    """``worst_images`` as recorded: ``path`` (relative to the data ``root`` when inside it, as a
    POSIX path; else absolute), ``true`` and ``predicted`` labels, ``probability`` of the true class.
    ``paths`` are the evaluated images' files, in the order the trainer evaluated them."""
    rows = []
    for index, true, predicted, probability in worst:
        path = Path(paths[int(index)])
        shown = path.resolve()
        if root is not None and shown.is_relative_to(root.resolve()):
            shown = shown.relative_to(root.resolve())
        rows.append(
            {
                "path": shown.as_posix(),
                "true": labels[int(true)],
                "predicted": labels[int(predicted)],
                "probability": float(probability),
            }
        )
    return rows
