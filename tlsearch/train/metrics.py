"""Validation metrics by task.

Classification: ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present in the
targets), ``macro_f1`` (F1 averaged over the classes seen in targets or predictions; a class never
predicted scores 0), ``top_k_accuracy`` (the true class among the ``top_k`` highest scores, ``top_k``
capped at the number of classes) and ``log_loss`` (mean negative log-likelihood of the softmax).
These follow scikit-learn's definitions (``accuracy_score``, ``balanced_accuracy_score``,
``f1_score(average="macro")``, ``top_k_accuracy_score``, ``log_loss``; tests compare against them)
and are computed once per evaluation on the accumulated outputs, on their device.

Regression: R², MAE and RMSE, in the units ``outputs`` and ``targets`` are given in: the trainer
passes them in the original units (see :mod:`tlsearch.train.targets`).

Multi-label (:func:`multilabel_metrics`, on sigmoid probabilities): ``map``, the mean over the
labels with a validation positive of their average precision (scikit-learn's
``average_precision_score``: ``Σ (R_k − R_{k−1}) P_k`` over the distinct score cuts); ``micro_f1``
and ``macro_f1`` of the labels predicted at per-label thresholds (tuned on the very scores given,
:func:`tlsearch.train.thresholds.f1_thresholds`, unless thresholds are passed: the F1s of an epoch
are those its tuned thresholds reach, the same rule the export applies; a held-out test split is
scored at the exported thresholds instead), macro-F1 over the labels seen in targets or
predictions as for classification; and ``log_loss``, the mean binary cross-entropy per label and
image."""

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
    if task == "multilabel":  # outputs are logits, one per label
        return multilabel_metrics(torch.sigmoid(outputs.float()), targets)
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
    for name, (tp, support, count, *label) in zip(classes, counts, strict=True):
        precision = tp / count if count else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * tp / (support + count) if support + count else 0.0
        row: dict[str, float | str] = {
            "class": name,
            "support": support,
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }
        if len(label) == 2:  # multilabel (:func:`multilabel_evaluation`): the label's AP and threshold
            row["ap"], row["threshold"] = label
        rows.append(row)
    return rows


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Average precision ``(L,)`` of each label's ``scores`` ``(N, L)`` against 0/1 ``targets``, as
    scikit-learn's ``average_precision_score`` (tied scores are one cut); NaN for a label with no
    positive."""
    scores = scores.detach().float()
    targets = targets.detach().float()
    n, labels = scores.shape
    if n == 0:
        return torch.full((labels,), float("nan"))
    ranked, order = scores.sort(dim=0, descending=True)
    hits = targets.gather(0, order)
    true_positives = hits.cumsum(dim=0)
    kept = torch.arange(1, n + 1, dtype=torch.float32, device=scores.device)[:, None]
    positives = targets.sum(dim=0)
    cut = torch.ones_like(ranked, dtype=torch.bool)
    cut[:-1] = ranked[:-1] > ranked[1:]  # the last row of each run of ties is the cut
    precision = true_positives / kept
    recall = true_positives / positives.clamp_min(1)
    # recall gained since the previous cut, at each cut (0 between cuts)
    cut_recall = torch.where(cut, recall, torch.zeros_like(recall))
    previous = torch.cummax(torch.cat([torch.zeros_like(recall[:1]), cut_recall[:-1]]), dim=0).values
    ap = (torch.where(cut, recall - previous, torch.zeros_like(recall)) * precision).sum(dim=0)
    return torch.where(positives > 0, ap, torch.full_like(ap, float("nan")))


def multilabel_counts(predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(L, 3)`` counts per label of 0/1 ``predicted`` against ``targets``: true positives, support
    (true count), predicted count (the layout of :func:`per_class_counts`)."""
    predicted, targets = predicted.float(), targets.float()
    return torch.stack([(predicted * targets).sum(0), targets.sum(0), predicted.sum(0)], dim=1)


def multilabel_metrics(
    probabilities: torch.Tensor, targets: torch.Tensor, *, thresholds: torch.Tensor | None = None
) -> dict[str, float]:
    """mAP, micro/macro F1 at ``thresholds`` (default: tuned on these scores) and log loss of
    sigmoid ``probabilities`` ``(N, L)`` against 0/1 ``targets`` (module doc)."""
    from tlsearch.train.thresholds import f1_thresholds

    probabilities = probabilities.float()
    targets = targets.float().view_as(probabilities)
    if thresholds is None:
        thresholds = f1_thresholds(probabilities, targets)
    predicted = probabilities >= thresholds.to(probabilities.device)[None, :]
    tp, support, count = multilabel_counts(predicted, targets).unbind(dim=1)
    ap = average_precision(probabilities, targets)
    seen = (support > 0) | (count > 0)
    macro = (2 * tp[seen] / (support[seen] + count[seen])).mean() if bool(seen.any()) else torch.zeros(())
    micro_total = support.sum() + count.sum()
    clamped = probabilities.clamp(1e-7, 1 - 1e-7)
    bce = -(targets * clamped.log() + (1 - targets) * (1 - clamped).log()).mean()
    return {
        "map": float(ap[~ap.isnan()].mean()) if bool((~ap.isnan()).any()) else 0.0,
        "micro_f1": float(2 * tp.sum() / micro_total) if float(micro_total) else 0.0,
        "macro_f1": float(macro),
        "log_loss": float(bce),
    }


def multilabel_evaluation(
    logits: torch.Tensor, targets: torch.Tensor, *, thresholds: torch.Tensor | None = None
) -> tuple[dict[str, float], torch.Tensor]:
    """:func:`multilabel_metrics` of ``logits``, and ``(L, 5)`` per label: true positives, support,
    predicted count (at the thresholds), AP (0 without a positive) and the threshold, which
    :func:`per_class_rows` turns into the per-label table."""
    from tlsearch.train.thresholds import f1_thresholds

    probabilities = torch.sigmoid(logits.float())
    targets = targets.float().view_as(probabilities)
    if thresholds is None:
        thresholds = f1_thresholds(probabilities, targets)
    thresholds = thresholds.to(probabilities.device).float()
    metrics = multilabel_metrics(probabilities, targets, thresholds=thresholds)
    counts = multilabel_counts(probabilities >= thresholds[None, :], targets)
    ap = average_precision(probabilities, targets).nan_to_num(0.0).to(counts.device)
    return metrics, torch.cat([counts, ap[:, None], thresholds[:, None]], dim=1)
