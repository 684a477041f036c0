"""Validation metrics by task: accuracy for classification; R², MAE and RMSE for regression.

Regression metrics are computed in the units ``outputs`` and ``targets`` are given in: the trainer
passes them in the original units (see :mod:`tlsearch.train.targets`)."""

from __future__ import annotations

import torch


def evaluate_outputs(outputs: torch.Tensor, targets: torch.Tensor, *, task: str) -> dict[str, float]:
    """Metrics of model ``outputs`` against ``targets`` (class indices, or values ``(N, T)``)."""
    if task == "classification":
        return {"accuracy": float((outputs.argmax(dim=1) == targets).float().mean())}
    targets = targets.float().view_as(outputs)
    residual = ((outputs - targets) ** 2).sum(dim=0)
    total = ((targets - targets.mean(dim=0)) ** 2).sum(dim=0).clamp_min(1e-12)
    return {
        "r2": float((1 - residual / total).mean()),
        "mae": float((outputs - targets).abs().mean()),
        "rmse": float((outputs - targets).pow(2).mean().sqrt()),
    }
