"""Validation metrics by task.

Classification: ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present in the
targets), ``macro_f1`` (F1 averaged over the classes seen in targets or predictions; a class never
predicted scores 0), ``top_k_accuracy`` (the true class among the ``top_k`` highest scores, ``top_k``
capped at the number of classes) and ``log_loss`` (mean negative log-likelihood of the softmax).
These follow scikit-learn's definitions (``accuracy_score``, ``balanced_accuracy_score``,
``f1_score(average="macro")``, ``top_k_accuracy_score``, ``log_loss``; tests compare against them)
and are computed once per evaluation on the accumulated outputs, on their device.

Regression: R², MAE and RMSE, in the units ``outputs`` and ``targets`` are given in: the trainer
passes them in the original units (see :mod:`tlsearch.train.targets`)."""

from __future__ import annotations

import torch

#: the default ``k`` of ``top_k_accuracy`` (capped at the number of classes)
DEFAULT_TOP_K = 5


def evaluate_outputs(
    outputs: torch.Tensor, targets: torch.Tensor, *, task: str, top_k: int = DEFAULT_TOP_K
) -> dict[str, float]:
    """Metrics of model ``outputs`` against ``targets`` (class indices, or values ``(N, T)``)."""
    if task == "classification":
        return classification_metrics(outputs, targets, top_k=top_k)
    targets = targets.float().view_as(outputs)
    residual = ((outputs - targets) ** 2).sum(dim=0)
    total = ((targets - targets.mean(dim=0)) ** 2).sum(dim=0).clamp_min(1e-12)
    return {
        "r2": float((1 - residual / total).mean()),
        "mae": float((outputs - targets).abs().mean()),
        "rmse": float((outputs - targets).pow(2).mean().sqrt()),
    }


def classification_metrics(
    outputs: torch.Tensor, targets: torch.Tensor, *, top_k: int = DEFAULT_TOP_K
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1, top-k accuracy and log loss of logits ``(N, C)``."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1 but got {top_k}")
    outputs = outputs.float()
    targets = targets.long().view(-1)
    classes = outputs.shape[1]
    predicted = outputs.argmax(dim=1)
    confusion = per_class_counts(predicted, targets, classes=classes)
    true_positive, support, predicted_count = confusion.unbind(dim=1)
    present = support > 0
    recall = true_positive[present] / support[present]
    seen = present | (predicted_count > 0)
    f1 = 2 * true_positive[seen] / (support[seen] + predicted_count[seen])
    k = min(top_k, classes)
    in_top_k = (outputs.topk(k, dim=1).indices == targets[:, None]).any(dim=1)
    log_probs = torch.log_softmax(outputs, dim=1).gather(1, targets[:, None])
    return {
        "accuracy": float((predicted == targets).float().mean()),
        "balanced_accuracy": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "top_k_accuracy": float(in_top_k.float().mean()),
        "log_loss": float(-log_probs.mean()),
    }


def per_class_counts(predicted: torch.Tensor, targets: torch.Tensor, *, classes: int) -> torch.Tensor:
    """``(C, 3)`` counts per class: true positives, support (true count), predicted count."""
    true_positive = torch.bincount(targets[predicted == targets], minlength=classes)
    support = torch.bincount(targets, minlength=classes)
    predicted_count = torch.bincount(predicted, minlength=classes)
    return torch.stack([true_positive, support, predicted_count], dim=1).float()


def per_class_table(
    predicted: torch.Tensor, targets: torch.Tensor, *, classes: list[str]
) -> list[dict[str, float | str]]:
    """One row per class: ``class``, ``support``, ``precision``, ``recall``, ``f1`` (0 where undefined,
    as scikit-learn's ``classification_report`` with ``zero_division=0``)."""
    counts = per_class_counts(predicted.long(), targets.long(), classes=len(classes))
    return per_class_rows(counts.tolist(), classes=classes)


def per_class_rows(counts: list[list[float]], *, classes: list[str]) -> list[dict[str, float | str]]:
    """:func:`per_class_table`'s rows from :func:`per_class_counts` (as lists, e.g. recorded)."""
    rows: list[dict[str, float | str]] = []
    for name, (tp, support, count) in zip(classes, counts, strict=True):
        precision = tp / count if count else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * tp / (support + count) if support + count else 0.0
        rows.append({"class": name, "support": support, "precision": precision, "recall": recall, "f1": f1})
    return rows
