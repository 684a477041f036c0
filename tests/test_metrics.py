"""The validation metrics a study ranks its trials by (:func:`tlsearch.train.evaluate_outputs`),
checked against their textbook definitions on small hand-made outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlsearch.train import evaluate_outputs


def test_accuracy_is_the_share_of_rows_whose_largest_output_is_the_label() -> None:
    """Bugs caught: argmax over the wrong dimension; accuracy of the wrong comparison."""
    outputs = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [5.0, 0.0, 9.0], [0.0, 1.0, 0.0]])
    metrics = evaluate_outputs(outputs, torch.tensor([0, 1, 1, 1]), task="classification")
    assert metrics["accuracy"] == 0.75


def test_regression_metrics_are_r2_mae_and_rmse_per_column_averaged() -> None:
    """Bugs caught: R² against the wrong mean (all columns pooled, or none), a sign or power swapped."""
    targets = np.array([[1.0, 100.0], [2.0, 110.0], [3.0, 130.0], [6.0, 120.0]])
    outputs = targets + np.array([[0.5, -4.0], [-0.5, 2.0], [1.0, 0.0], [0.0, 6.0]])
    metrics = evaluate_outputs(torch.tensor(outputs), torch.tensor(targets), task="regression")
    residual = ((outputs - targets) ** 2).sum(axis=0)
    total = ((targets - targets.mean(axis=0)) ** 2).sum(axis=0)
    assert metrics["r2"] == pytest.approx(float((1 - residual / total).mean()))
    assert metrics["r2"] == pytest.approx(0.8904, abs=1e-4)  # columns: 1 − 1.5/14 and 1 − 56/500
    assert metrics["mae"] == pytest.approx(np.abs(outputs - targets).mean())
    assert metrics["rmse"] == pytest.approx(np.sqrt(((outputs - targets) ** 2).mean()))


def test_a_perfect_prediction_of_a_constant_column_has_r2_one_not_nan() -> None:
    """Bug caught: R² dividing by a zero variance (a NaN score that ranks nowhere)."""
    targets = torch.tensor([[4.0], [4.0], [4.0]])
    metrics = evaluate_outputs(targets.clone(), targets.view(-1), task="regression")
    assert metrics == {"r2": 1.0, "mae": 0.0, "rmse": 0.0}
