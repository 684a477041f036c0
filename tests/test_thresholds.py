"""Decision thresholds tuned on validation scores (:mod:`tlsearch.train.thresholds`), checked
against a brute force over every candidate threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlsearch.train.thresholds import (
    DEFAULT_THRESHOLD,
    f1_thresholds,
    threshold_for_precision,
    threshold_for_recall,
)


def _f1(scores: np.ndarray, targets: np.ndarray, threshold: float) -> float:
    predicted = scores >= threshold
    tp = float((predicted & (targets == 1)).sum())
    denominator = float(predicted.sum() + targets.sum())
    return 2 * tp / denominator if denominator else 0.0


def test_each_label_gets_the_threshold_of_its_best_f1() -> None:
    """Bugs caught: one threshold shared by all labels; a cut inside a run of equal scores; F1 of
    the wrong count (kept items or positives); sorting the wrong way."""
    rng = np.random.default_rng(0)
    targets = (rng.random((60, 4)) < [0.1, 0.3, 0.5, 0.8]).astype(np.float32)
    scores = np.clip(targets * 0.3 + rng.random((60, 4)) * 0.7, 0, 1).round(2)  # ties on purpose
    tuned = f1_thresholds(torch.tensor(scores), torch.tensor(targets)).numpy()
    for label in range(4):
        candidates = np.unique(scores[:, label])
        best = max(_f1(scores[:, label], targets[:, label], t) for t in candidates)
        assert _f1(scores[:, label], targets[:, label], float(tuned[label])) == pytest.approx(best)
    assert len(set(tuned.round(4))) > 1


def test_the_threshold_lies_halfway_between_the_kept_and_the_next_lower_score() -> None:
    """Bugs caught: a threshold exactly on a score (it fails on a validation score that moves by a
    rounding error); the highest score among ties not chosen; the last cut not halfway to 0."""
    scores = torch.tensor([[0.9, 0.9], [0.7, 0.6], [0.4, 0.2]])
    targets = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    tuned = f1_thresholds(scores, targets)
    assert tuned[0].item() == pytest.approx((0.7 + 0.4) / 2)
    assert tuned[1].item() == pytest.approx(0.2 / 2)


def test_a_label_without_positives_keeps_the_default() -> None:
    """Bug caught: a label never positive in validation tuned to predict nothing or everything."""
    scores = torch.tensor([[0.9, 0.8], [0.1, 0.3]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert f1_thresholds(scores, targets)[1].item() == DEFAULT_THRESHOLD


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        f1_thresholds(torch.zeros(3, 2), torch.zeros(3, 3))


def test_precision_target_takes_the_lowest_threshold_that_reaches_it() -> None:
    """Bugs caught: the highest such threshold (recall thrown away); precision of the wrong side."""
    scores = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3])
    targets = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    # precision at each cut: 1, 1, 2/3, 3/4, 4/5, 4/6, 5/7
    assert threshold_for_precision(scores, targets, target=0.75) == pytest.approx(0.6)
    assert threshold_for_precision(scores, targets, target=1.0) == pytest.approx(0.9)
    assert threshold_for_precision(torch.tensor([0.9]), torch.tensor([0.0]), target=0.5) is None


def test_tied_scores_are_never_split_by_a_threshold() -> None:
    """An item is positive at or above the threshold, so tied scores fall on the same side. Bug
    caught: a cut between two equal scores, whose precision (1/2 here) no threshold gives (at 0.5
    it is 1/3): the precision target would be reported reached when it is not."""
    scores = torch.tensor([0.9, 0.5, 0.5])
    for targets in (torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])):  # either tie order
        assert threshold_for_precision(scores, targets, target=0.5) is None
        assert threshold_for_precision(scores, targets, target=1 / 3) == pytest.approx(0.5)


def test_recall_target_takes_the_highest_threshold_that_reaches_it() -> None:
    scores = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3])
    targets = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    assert threshold_for_recall(scores, targets, target=0.6) == pytest.approx(0.7)
    assert threshold_for_recall(scores, targets, target=1.0) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="target recall must be in"):
        threshold_for_recall(scores, targets, target=0.0)


def test_no_validation_images_give_every_label_the_default() -> None:
    """Bug caught: a crash (or thresholds of 0) when the split has no images."""
    empty = torch.zeros(0, 3)
    torch.testing.assert_close(f1_thresholds(empty, empty), torch.full((3,), DEFAULT_THRESHOLD))


@pytest.mark.parametrize("target", [0.0, 1.5])
def test_a_precision_target_outside_zero_to_one_is_refused(target: float) -> None:
    """Bug caught: the precision target not checked (0 would pick the lowest score, 1.5 none)."""
    scores, targets = torch.tensor([0.9, 0.2]), torch.tensor([1.0, 0.0])
    with pytest.raises(ValueError, match="target precision must be in"):
        threshold_for_precision(scores, targets, target=target)
