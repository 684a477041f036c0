"""Transferability scores: how well a frozen backbone's features suit a labelled task, from one
forward pass and no training.

* :func:`logme` — LogME (You, Liu, Wang & Long, *LogME: Practical Assessment of Pre-trained Models
  for Transfer Learning*, ICML 2021): the log marginal likelihood (evidence) of a Bayesian linear
  model from features to each target column, maximised over its prior precision α and noise
  precision β by the paper's fixed-point iteration, averaged over targets and divided by the number
  of samples. Works for classification (one-hot targets) and regression (real targets).
* :func:`h_score` — H-score (Bao et al., *An Information-Theoretic Approach to Transferability in
  Task Transfer Learning*, ICIP 2019): ``tr(cov(f)⁻¹ cov(E[f | y]))``, exact in closed form;
  with the shrinkage covariance of Ibrahim, Ponomareva & Mazumder (*Newer is not always better*,
  ICLR 2023) so that it stays stable when features outnumber samples.

Higher is better for both. Neither is reliable on its own across datasets (Agostinelli et al.,
*How stable are transferability metrics evaluations?*, ECCV 2022): tlsearch uses them to order and
prune candidates, never to pick the final model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

MAX_ITERATIONS = 100
"""Fixed-point iterations per target column at most (the authors' ``LogME.py`` stops at 11)."""
TOLERANCE = 1e-3
"""Stop when ``t = α/β`` changes by at most this, relatively (the authors' rule)."""
BOUNDS = (1e-10, 1e10)
"""α and β are kept in this range: when a column is interpolated exactly (fewer samples than
feature dimensions), ‖Fm − y‖² or ‖m‖² reaches 0 and the unguarded update sends β or α to
infinity (the score became NaN). The authors add 1e-5 to both denominators instead, which bounds
them too but shifts the fixed point with the features' scale."""


def _targets(labels: np.ndarray, *, task: str) -> np.ndarray:
    """Target columns: one-hot for classification (labels 0…C−1), the values for regression, the
    0/1 label columns for multilabel (LogME then averages the evidence over the labels)."""
    labels = np.asarray(labels)
    if task == "classification":
        classes = np.unique(labels.astype(np.int64))
        return (labels.astype(np.int64)[:, None] == classes[None, :]).astype(np.float64)
    if task in ("regression", "multilabel"):
        y = labels.astype(np.float64)
        return y[:, None] if y.ndim == 1 else y
    raise ValueError(f"task {task!r} is not valid; valid choices: classification, regression, multilabel")


def _check(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be a 2-D array (samples × features) but got shape {f.shape}")
    if len(f) != len(labels):
        raise ValueError(f"features have {len(f)} rows but labels have {len(labels)}")
    if len(f) < 2:
        raise ValueError(f"a transferability score needs at least 2 samples but got {len(f)}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    return f


def logme_evidence(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The log evidence ``log p(y | F, α, β)`` of one target column, computed directly (dense
    matrices, no decomposition): the reference that :func:`logme` is tested against."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    residual = float(np.sum((f @ m - y) ** 2))
    _, logdet = np.linalg.slogdet(a)
    return float(
        n / 2 * math.log(beta)
        + d / 2 * math.log(alpha)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * residual
        - alpha / 2 * float(m @ m)
        - logdet / 2
    )


def logme_fit(
    features: np.ndarray, labels: np.ndarray, *, task: str = "classification"
) -> dict[str, np.ndarray]:
    """LogME's fixed point per target column: ``{"evidence", "alpha", "beta", "iterations"}`` (arrays,
    one entry per column; evidence is the total log evidence, not divided by n).

    One thin SVD ``F = U S Vᵀ`` serves every column and every iteration: with ``σ = s²`` and
    ``z = Uᵀy``, the posterior mean's norm and the residual are sums over the singular values, so
    an iteration costs O(k·C) for k = min(n, d) and C columns, all columns updated at once::

        γ = Σ βσ/(α+βσ);   ‖m‖² = Σ β²σz²/(α+βσ)²;   ‖Fm−y‖² = Σ α²z²/(α+βσ)² + ‖y‖² − ‖z‖²
        α ← γ/‖m‖²;        β ← (n−γ)/‖Fm−y‖²

    (the updates of MacKay's evidence framework that the paper's Algorithm 1 uses), written in
    ``t = α/β`` as the authors' ``LogME.py`` (``_fit_fixed_point``) does and stopped by its rule
    (``t`` changes by at most :data:`TOLERANCE`, relatively), with α and β kept within
    :data:`BOUNDS`. Differences from the reference, each measured: it stops after 11 iterations,
    which on Lite0 features of 300 images left every column unconverged (a lower, non-maximised
    evidence), so here up to :data:`MAX_ITERATIONS`; its 1e-5 guard in the denominators makes the
    score depend on the features' scale (×1000 features: 0.545 → −0.91), the bounds do not; with
    fewer samples than dimensions (k = n < d) the log-determinant here includes the null space's
    ``(d − k)·log α`` (the exact evidence, as :func:`logme_evidence` computes it).
    """
    f = _check(features, labels)
    y = _targets(labels, task=task)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = (s**2)[:, None]  # k × 1
    z = u.T @ y  # k × C
    z2 = z**2
    outside = np.maximum((y**2).sum(0) - z2.sum(0), 0.0)  # part of y no feature direction explains
    columns = y.shape[1]
    alpha = np.ones(columns)
    beta = np.ones(columns)
    iterations = np.zeros(columns, dtype=np.int64)
    active = np.ones(columns, dtype=bool)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for it in range(1, MAX_ITERATIONS + 1):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum(0)
            m2 = (sigma * z2 / (t + sigma) ** 2).sum(0)
            res2 = (z2 / (1 + sigma / t) ** 2).sum(0) + outside
            new_alpha = np.clip(gamma / m2, BOUNDS[0], BOUNDS[1])
            new_beta = np.clip((n - gamma) / res2, BOUNDS[0], BOUNDS[1])
            done = np.abs(new_alpha / new_beta - t) / t <= TOLERANCE
            alpha = np.where(active, new_alpha, alpha)
            beta = np.where(active, new_beta, beta)
            iterations = np.where(active, it, iterations)
            active &= ~done
            if not active.any():
                break
        denom = alpha + beta * sigma
        m2 = (beta**2 * sigma * z2 / denom**2).sum(0)
        res2 = (alpha**2 * z2 / denom**2).sum(0) + outside
        logdet = np.log(denom).sum(0) + (d - len(s)) * np.log(alpha)  # eigenvalues of αI + βFᵀF
        evidence = (
            n / 2 * np.log(beta)
            + d / 2 * np.log(alpha)
            - n / 2 * math.log(2 * math.pi)
            - beta / 2 * res2
            - alpha / 2 * m2
            - logdet / 2
        )
    return {"evidence": evidence, "alpha": alpha, "beta": beta, "iterations": iterations}


def logme(features: np.ndarray, labels: np.ndarray, *, task: str = "classification") -> float:
    """LogME: the maximised log evidence per sample, averaged over target columns (higher is better)."""
    fit = logme_fit(features, labels, task=task)
    return float(np.mean(fit["evidence"]) / len(features))


def h_score(
    features: np.ndarray, labels: np.ndarray, *, task: str = "classification", shrinkage: bool = True
) -> float:
    """H-score ``tr(cov(f)⁻¹ cov(E[f|y]))`` for class labels (higher is better).

    ``shrinkage`` uses the Ledoit–Wolf shrunk covariance (the regularised H-score of Ibrahim et
    al.), else the pseudo-inverse of the sample covariance (the original definition)."""
    if task != "classification":
        raise ValueError(
            f"h_score needs class labels (task classification) but the task is {task!r}; use logme"
        )
    f = _check(features, labels)
    f = f - f.mean(0, keepdims=True)
    labels = np.asarray(labels).astype(np.int64)
    class_means = np.zeros_like(f)
    for c in np.unique(labels):
        where = labels == c
        class_means[where] = f[where].mean(0)
    cov_g = class_means.T @ class_means / len(f)
    cov_f = f.T @ f / len(f)
    if shrinkage:
        cov_f = _ledoit_wolf(f, cov_f)
        return float(np.trace(np.linalg.solve(cov_f, cov_g)))
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))


def _ledoit_wolf(centred: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Ledoit & Wolf's (2004) optimal shrinkage of ``cov`` toward a scaled identity."""
    n, d = centred.shape
    mu = float(np.trace(cov)) / d
    target = mu * np.eye(d)
    delta = float(((cov - target) ** 2).sum())
    x2 = centred**2
    beta_sum = float(((x2.T @ x2) / n - cov**2).sum()) / n
    shrink = 0.0 if delta == 0 else min(max(beta_sum / delta, 0.0), 1.0)
    return shrink * target + (1 - shrink) * cov + 1e-12 * np.eye(d)


#: score name → function(features, labels, task=…) → float, higher is better
SCORES: dict[str, Callable[..., float]] = {"logme": logme, "hscore": h_score}


def transferability(
    name: str, features: np.ndarray, labels: np.ndarray, *, task: str = "classification"
) -> float:
    """The score ``name`` (one of :data:`SCORES`) of ``features`` for ``labels``."""
    if name not in SCORES:
        raise ValueError(f"unknown transferability score {name!r}; valid choices: {', '.join(SCORES)}")
    return SCORES[name](features, labels, task=task)
