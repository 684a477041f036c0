"""The classification training loss and the class-imbalance options regularizers may set.

Loss options (:data:`tlsearch.kinds.regularizer.LOSS_OPTIONS`), all off by default:

- ``label_smoothing`` ε: targets (1 - ε) on the true class, ε spread evenly.
- ``class_weighting``: ``"inverse"`` (weight ``N / (C · n_c)``, scikit-learn's "balanced") or
  ``"effective"`` (Cui et al., *Class-Balanced Loss Based on Effective Number of Samples*, CVPR
  2019: ``(1 - β) / (1 - β^n_c)``, scaled to sum to C) with ``class_weighting_beta`` β.
- ``focal_gamma`` γ: focal loss (Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017),
  each term scaled by ``(1 - p)^γ``; γ = 0 is cross-entropy.
- ``logit_adjustment_tau`` τ: logit-adjusted loss (Menon et al., *Long-Tail Learning via Logit
  Adjustment*, ICLR 2021): the loss sees ``logits + τ · log(prior)``, the model predicts with the
  plain logits, so rare classes get a larger margin.

Class counts come from the training targets (:func:`class_counts`); a class with no training image
gets weight 0. Validation loss stays the plain cross-entropy (see ``Trainer.loss``).

Multi-label: :func:`multilabel_loss`, binary cross-entropy with logits averaged over labels and
images, with two of the options (:data:`MULTILABEL_LOSS_OPTIONS`) in their per-label form:

- ``class_weighting``: each label's positive terms weighted against its negatives (BCE's
  ``pos_weight``): ``inverse`` ``n_neg / n_pos``, ``effective`` the ratio of the effective numbers
  ``(1 - β^n_neg) / (1 - β^n_pos)`` (Cui et al.; → ``inverse`` as β → 1). A rare label's few
  positives then weigh as much as its many negatives.
- ``focal_gamma`` γ: each term scaled by ``(1 - p_t)^γ`` with ``p_t`` the probability of the true
  0/1 value (the binary form of Lin et al.); γ = 0 is the (weighted) BCE.

Label smoothing and logit adjustment stay classification's (refused for multilabel at config time:
their multi-label forms are not standard), and so does the class-balanced sampler (an image has
several labels, so there is no one class to balance).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from tlsearch.validate import TASK_LOSS_OPTIONS

_FLOOR = 1e-30
"""The least ``1 - p`` the focal factor sees (its gradient is 0 below it)."""

CLASS_WEIGHTINGS = ("inverse", "effective")
#: the loss options :func:`multilabel_loss` honours (:mod:`tlsearch.validate` refuses the others)
MULTILABEL_LOSS_OPTIONS = TASK_LOSS_OPTIONS["multilabel"]


def class_counts(targets: Any, *, num_classes: int) -> torch.Tensor:
    """Training images per class, ``(C,)`` float, of class-index ``targets`` (array or tensor)."""
    return torch.bincount(torch.as_tensor(targets).long().view(-1), minlength=num_classes).float()


def class_weights(counts: torch.Tensor, *, scheme: str, beta: float = 0.999) -> torch.Tensor:
    """Per-class loss weights from ``counts`` by ``scheme`` (:data:`CLASS_WEIGHTINGS`), on
    ``counts``' device without a host synchronisation (the trainer calls this every step)."""
    present = counts > 0
    if scheme == "inverse":
        weights = counts.sum() / (present.sum() * counts.clamp_min(1))
    elif scheme == "effective":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"class_weighting_beta must be in [0, 1) but got {beta}")
        weights = (1.0 - beta) / (1.0 - beta ** counts.clamp_min(1))
        weights = weights * present.sum() / torch.where(present, weights, 0.0).sum()
    else:
        raise ValueError(f"unknown class_weighting {scheme!r}; valid: {', '.join(CLASS_WEIGHTINGS)}")
    return torch.where(present, weights, torch.zeros_like(weights))


def classification_loss(
    outputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    options: Mapping[str, Any],
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training loss of logits ``outputs`` against class indices ``(N,)`` or soft targets
    ``(N, C)`` (mixup), with the loss ``options`` (module doc); ``counts``: the training images per
    class, needed by ``class_weighting`` and ``logit_adjustment_tau``."""
    smoothing = float(options.get("label_smoothing", 0.0))
    gamma = float(options.get("focal_gamma", 0.0))
    tau = float(options.get("logit_adjustment_tau", 0.0))
    scheme = options.get("class_weighting")
    if (scheme is not None or tau) and counts is None:
        raise ValueError("class_weighting and logit_adjustment_tau need the training class counts")
    weight = None
    if scheme is not None:
        assert counts is not None
        beta = float(options.get("class_weighting_beta", 0.999))
        weight = class_weights(counts, scheme=str(scheme), beta=beta).to(outputs.device)
    if tau:
        assert counts is not None
        prior = (counts / counts.sum()).clamp_min(1e-12).to(outputs.device)
        outputs = outputs + tau * prior.log()
    if gamma == 0.0:
        return F.cross_entropy(outputs, targets, weight=weight, label_smoothing=smoothing)
    return focal_loss(outputs, targets, gamma=gamma, weight=weight, label_smoothing=smoothing)


def focal_loss(
    outputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma: float,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Focal loss ``-Σ_c y_c (1 - p_c)^γ log p_c``, averaged as ``F.cross_entropy`` averages
    (by the summed target weights when ``weight`` is given), so γ = 0 is exactly cross-entropy."""
    classes = outputs.shape[1]
    soft = F.one_hot(targets, classes).float() if targets.ndim == 1 else targets.float()
    if label_smoothing:
        soft = soft * (1.0 - label_smoothing) + label_smoothing / classes
    log_p = torch.log_softmax(outputs.float(), dim=1)
    # (1 - p)^γ from log p without cancelling (expm1), floored: at p = 1 the factor's derivative
    # γ (1 - p)^(γ-1) is infinite for γ < 1, and autograd's ∞ · 0 made every gradient NaN (an
    # L-BFGS probe's line search then overflowed); the floor's gradient is 0, as is the term's.
    factor = (-torch.expm1(log_p)).clamp_min(_FLOOR).pow(gamma)
    terms = -soft * factor * log_p
    if weight is None:
        return terms.sum() / len(outputs)
    if targets.ndim == 1:  # as cross_entropy: normalised by the weights of the true classes
        return (terms * weight).sum() / weight[targets].sum()
    return (terms * weight).sum() / len(outputs)


def positive_weights(
    positives: torch.Tensor, *, total: int, scheme: str, beta: float = 0.999
) -> torch.Tensor:
    """Per-label weights ``(L,)`` of the positive terms (module doc) from ``positives``, the
    training images carrying each label, out of ``total``; 1 for a label without positives."""
    negatives = (total - positives).clamp_min(0)
    if scheme == "inverse":
        weights = negatives / positives.clamp_min(1)
    elif scheme == "effective":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"class_weighting_beta must be in [0, 1) but got {beta}")
        weights = (1.0 - beta**negatives) / (1.0 - beta ** positives.clamp_min(1))
    else:
        raise ValueError(f"unknown class_weighting {scheme!r}; valid: {', '.join(CLASS_WEIGHTINGS)}")
    return torch.where(positives > 0, weights, torch.ones_like(weights))


def multilabel_loss(
    outputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    options: Mapping[str, Any] | None = None,
    positives: torch.Tensor | None = None,
    total: int = 0,
) -> torch.Tensor:
    """BCE-with-logits of ``outputs`` ``(N, L)`` against 0/1 (or mixed, soft) label vectors, with
    the loss ``options`` of the module doc; ``positives`` (training images per label, out of
    ``total``) are needed by ``class_weighting``."""
    outputs = outputs.float()
    targets = targets.float().view_as(outputs)
    options = options or {}
    gamma = float(options.get("focal_gamma", 0.0))
    scheme = options.get("class_weighting")
    weight = None
    if scheme is not None:
        if positives is None:
            raise ValueError("class_weighting needs the training images per label")
        beta = float(options.get("class_weighting_beta", 0.999))
        weight = positive_weights(positives.float(), total=total, scheme=str(scheme), beta=beta).to(
            outputs.device
        )
    if gamma == 0.0:
        return F.binary_cross_entropy_with_logits(outputs, targets, pos_weight=weight)
    log_p, log_q = F.logsigmoid(outputs), F.logsigmoid(-outputs)
    # (1 - p)^γ = exp(γ log q) and p^γ = exp(γ log p): smooth everywhere, where ``pow`` of a
    # probability that rounds to 0 has an infinite derivative for γ < 1 (∞ · 0 = NaN gradients)
    positive = targets * torch.exp(gamma * log_q) * log_p
    if weight is not None:
        positive = positive * weight
    return -(positive + (1.0 - targets) * torch.exp(gamma * log_p) * log_q).mean()
