"""The metrics at their edges: a class or label seen once, never, or only in predictions; a score
exactly at its threshold; probabilities of exactly 0 and 1; one image; none. Each against
scikit-learn's definition where it has one (the mutation run's survivors in train/metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score, top_k_accuracy_score

from tlsearch.train.metrics import (
    average_precision,
    classification_metrics,
    multilabel_evaluation,
    multilabel_metrics,
    per_class_rows,
    per_class_table,
)


def _logits_for(predicted: list[int], classes: int) -> torch.Tensor:
    """Logits whose argmax is ``predicted``, with the other classes ranked by index."""
    logits = -torch.arange(classes, dtype=torch.float32).repeat(len(predicted), 1) / 10
    logits[torch.arange(len(predicted)), torch.tensor(predicted)] = 5.0
    return logits


def test_the_default_top_k_is_5() -> None:
    # the argmax is class 9, then the logits fall with the index: class 3 ranks 5th, class 4 6th
    logits = _logits_for([9] * 6, 10)
    targets = torch.full((6,), 3)
    assert classification_metrics(logits, targets)["top_k_accuracy"] == 1.0
    assert classification_metrics(logits, torch.full((6,), 4))["top_k_accuracy"] == 0.0
    assert top_k_accuracy_score(targets.numpy(), logits.numpy(), k=5, labels=range(10)) == 1.0


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_a_class_seen_once_or_only_in_predictions_counts_as_scikit_learn_counts_it() -> None:
    """Class 2 has one image (missed), class 3 none but one prediction, class 4 neither: balanced
    accuracy averages the classes with support (0, 1, 2); macro-F1 the classes in targets or
    predictions (0 to 3), as scikit-learn's default labels."""
    truth = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 1, 3]
    metrics = classification_metrics(_logits_for(predicted, 5), torch.tensor(truth))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))
    # (one class more or less in either mean moves it: 4 classes, not 3 or 5)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.8 + 0 + 0) / 4)


def test_per_class_rows_are_scikit_learns_and_refuse_a_count_per_missing_class() -> None:
    truth, predicted = torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 1, 1, 1, 2, 2])
    rows = per_class_table(predicted, truth, classes=["a", "b", "c"])
    expected = f1_score(truth.numpy(), predicted.numpy(), average=None, zero_division=0)
    assert [r["f1"] for r in rows] == pytest.approx(expected.tolist())
    with pytest.raises(ValueError):  # three classes' counts named by two
        per_class_rows([[1, 2, 1], [2, 3, 3], [1, 1, 2]], classes=["a", "b"])


def test_average_precision_of_one_image_and_of_none() -> None:
    one = average_precision(torch.tensor([[0.9, 0.2]]), torch.tensor([[1.0, 0.0]]))
    assert one[0] == 1.0 and math.isnan(one[1])  # a label without a positive has no AP
    assert torch.isnan(average_precision(torch.zeros(0, 3), torch.zeros(0, 3))).all()
    assert average_precision(torch.zeros(0, 3), torch.zeros(0, 3)).shape == (3,)


def test_a_label_with_a_single_positive_has_scikit_learns_ap() -> None:
    scores = torch.tensor([[0.9], [0.7], [0.4], [0.1]])
    targets = torch.tensor([[0.0], [1.0], [0.0], [0.0]])
    assert float(average_precision(scores, targets)[0]) == pytest.approx(
        average_precision_score(targets.numpy()[:, 0], scores.numpy()[:, 0])
    )
    assert float(average_precision(scores, targets)[0]) == pytest.approx(0.5)


def test_macro_f1_of_labels_seen_in_targets_or_predictions_and_a_score_at_its_threshold() -> None:
    """Label a: one positive, predicted (its score equals the threshold: at the threshold is
    positive); b: never present, never predicted (left out); c: one positive, missed; d: no
    positive, predicted once. Macro-F1 is the mean over a, c and d."""
    probabilities = torch.tensor([[0.5, 0.1, 0.2, 0.9], [0.2, 0.1, 0.1, 0.1]])
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    thresholds = torch.tensor([0.5, 0.5, 0.5, 0.5])
    metrics = multilabel_metrics(probabilities, targets, thresholds=thresholds)
    assert metrics["macro_f1"] == pytest.approx(1 / 3)
    assert metrics["micro_f1"] == pytest.approx(2 * 1 / (2 + 2))
    _, rows = multilabel_evaluation(torch.logit(probabilities), targets, thresholds=thresholds)
    tp, support, count, ap, cut = rows[0].tolist()
    assert (tp, support, count) == (1, 1, 1) and cut == 0.5
    assert rows[1, 3] == 0.0  # no positive: AP recorded as 0 (the table shows '—'), not NaN or 1


def test_no_label_with_a_positive_scores_zero_not_one() -> None:
    metrics = multilabel_metrics(
        torch.full((3, 2), 0.2), torch.zeros(3, 2), thresholds=torch.tensor([0.5, 0.5])
    )
    assert metrics["map"] == 0.0 and metrics["micro_f1"] == 0.0


@pytest.mark.parametrize(("probability", "target"), [(0.0, 1.0), (1.0, 0.0)])
def test_log_loss_of_a_certain_mistake_is_finite_at_the_clamp(probability: float, target: float) -> None:
    """A probability of exactly 0 or 1 on the wrong side is clamped to 1e-7 from the edge (about
    16 nats), never infinite."""
    metrics = multilabel_metrics(
        torch.tensor([[probability]]), torch.tensor([[target]]), thresholds=torch.tensor([0.5])
    )
    edge = np.float32(1e-7) if probability == 0.0 else 1 - np.float32(1 - np.float32(1e-7))
    assert metrics["log_loss"] == pytest.approx(-math.log(edge), rel=1e-3)
