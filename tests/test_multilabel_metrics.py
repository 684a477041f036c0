"""Multi-label metrics against scikit-learn's definitions, and the trainer's BCE loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, log_loss

from tlsearch.deploy._labels import mean_average_precision
from tlsearch.train.losses import multilabel_loss
from tlsearch.train.metrics import (
    average_precision,
    evaluate_outputs,
    multilabel_evaluation,
    multilabel_metrics,
    per_class_rows,
)
from tlsearch.train.thresholds import f1_thresholds


def _data(seed: int, n: int = 80, labels: int = 5, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < [0.5, 0.3, 0.2, 0.1, 0.05][:labels]).astype(np.float64)
    p = np.clip(0.35 * y + 0.65 * rng.random((n, labels)), 0.001, 0.999)
    if ties:
        p = np.round(p, 1).clip(0.001, 0.999)  # many tied scores: one cut each, as sklearn counts them
    y[0, -1] = 1.0  # every label has a positive
    return p, y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [True, False])
def test_average_precision_matches_sklearn(seed: int, ties: bool) -> None:
    p, y = _data(seed, ties=ties)
    ours = average_precision(torch.tensor(p), torch.tensor(y)).double().numpy()
    expected = [average_precision_score(y[:, j], p[:, j]) for j in range(y.shape[1])]
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    metrics = multilabel_metrics(torch.tensor(p), torch.tensor(y))
    assert metrics["map"] == pytest.approx(np.mean(expected), abs=1e-6)
    # the torch-free copy the INT8 gate uses agrees too
    assert mean_average_precision(p, y) == pytest.approx(np.mean(expected), abs=1e-9)


def test_map_skips_labels_without_a_positive_like_sklearn_macro() -> None:
    p, y = _data(3)
    y[:, 2] = 0.0
    metrics = multilabel_metrics(torch.tensor(p), torch.tensor(y))
    kept = [j for j in range(y.shape[1]) if y[:, j].any()]
    expected = np.mean([average_precision_score(y[:, j], p[:, j]) for j in kept])
    assert metrics["map"] == pytest.approx(expected, abs=1e-6)
    assert mean_average_precision(p, y) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 4])
def test_f1s_are_sklearns_at_the_tuned_thresholds(seed: int) -> None:
    p, y = _data(seed, ties=False)
    thresholds = f1_thresholds(torch.tensor(p), torch.tensor(y)).double().numpy()
    predicted = (p >= thresholds[None, :]).astype(int)
    metrics = multilabel_metrics(torch.tensor(p), torch.tensor(y))
    assert metrics["micro_f1"] == pytest.approx(f1_score(y, predicted, average="micro"), abs=1e-6)
    seen = [j for j in range(y.shape[1]) if y[:, j].any() or predicted[:, j].any()]
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(y, predicted, average="macro", labels=seen, zero_division=0), abs=1e-6
    )
    # tuning maximises each label's F1: no threshold at 0.5 does better on these scores
    at_half = multilabel_metrics(torch.tensor(p), torch.tensor(y), thresholds=torch.full((5,), 0.5))
    assert metrics["macro_f1"] >= at_half["macro_f1"]


def test_log_loss_is_the_mean_binary_cross_entropy_per_label() -> None:
    p, y = _data(5, ties=False)
    metrics = multilabel_metrics(torch.tensor(p), torch.tensor(y))
    expected = np.mean([log_loss(y[:, j], p[:, j], labels=[0, 1]) for j in range(y.shape[1])])
    assert metrics["log_loss"] == pytest.approx(expected, rel=1e-5)


def test_evaluate_outputs_takes_logits_and_the_loss_is_bce_with_logits() -> None:
    p, y = _data(6, ties=False)
    logits = torch.logit(torch.tensor(p, dtype=torch.float32))
    from_logits = evaluate_outputs(logits, torch.tensor(y), task="multilabel")
    direct = multilabel_metrics(torch.tensor(p), torch.tensor(y))
    assert from_logits["map"] == pytest.approx(direct["map"], abs=1e-5)
    assert from_logits["log_loss"] == pytest.approx(direct["log_loss"], rel=1e-4)
    loss = float(multilabel_loss(logits, torch.tensor(y, dtype=torch.float32)))
    assert loss == pytest.approx(direct["log_loss"], rel=1e-4)


def test_per_label_rows_hold_support_precision_recall_f1_ap_and_threshold() -> None:
    p, y = _data(7, ties=False)
    logits = torch.logit(torch.tensor(p, dtype=torch.float32))
    _, counts = multilabel_evaluation(logits, torch.tensor(y))
    rows = per_class_rows(counts.tolist(), classes=list("abcde"))
    thresholds = f1_thresholds(torch.tensor(p), torch.tensor(y)).numpy()
    predicted = p >= thresholds[None, :]
    for j, row in enumerate(rows):
        assert row["class"] == "abcde"[j]
        assert row["support"] == y[:, j].sum()
        assert row["f1"] == pytest.approx(f1_score(y[:, j], predicted[:, j], zero_division=0), abs=1e-6)
        assert row["ap"] == pytest.approx(average_precision_score(y[:, j], p[:, j]), abs=1e-5)
        assert row["threshold"] == pytest.approx(float(thresholds[j]), abs=1e-5)


def test_logme_ranks_features_for_multilabel_targets() -> None:
    from tlsearch.rank.scores import logme

    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < 0.3).astype(np.float64)
    informative = y @ rng.normal(size=(4, 16)) + 0.1 * rng.normal(size=(200, 16))
    noise = rng.normal(size=(200, 16))
    good, bad = logme(informative, y, task="multilabel"), logme(noise, y, task="multilabel")
    assert np.isfinite(good) and np.isfinite(bad) and good > bad


def test_multilabel_class_weights_are_bces_pos_weight_and_focal_zero_is_bce() -> None:
    from tlsearch.train.losses import positive_weights

    torch.manual_seed(0)
    logits = torch.randn(40, 3)
    targets = (torch.rand(40, 3) < torch.tensor([0.5, 0.2, 0.05])).float()
    targets[0, 2] = 1.0
    positives = targets.sum(dim=0)
    inverse = positive_weights(positives, total=40, scheme="inverse")
    torch.testing.assert_close(inverse, (40 - positives) / positives)
    weighted = multilabel_loss(
        logits, targets, options={"class_weighting": "inverse"}, positives=positives, total=40
    )
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=inverse)
    torch.testing.assert_close(weighted, expected)
    effective = positive_weights(positives, total=40, scheme="effective", beta=0.9)
    torch.testing.assert_close(effective, (1 - 0.9 ** (40 - positives)) / (1 - 0.9**positives))
    assert float(effective[2]) > float(effective[0])  # the rare label's positives weigh more
    plain = multilabel_loss(logits, targets)
    focal0 = multilabel_loss(logits, targets, options={"focal_gamma": 0.0})
    torch.testing.assert_close(focal0, plain)
    # the binary focal form, written out: -(y (1-p)^γ log p + (1-y) p^γ log(1-p))
    p = torch.sigmoid(logits)
    by_hand = -(targets * (1 - p) ** 2 * p.log() + (1 - targets) * p**2 * (1 - p).log()).mean()
    torch.testing.assert_close(multilabel_loss(logits, targets, options={"focal_gamma": 2.0}), by_hand)


def test_a_label_without_positives_is_weighted_one_and_a_single_positive_counts() -> None:
    """Bugs caught: a label no training image carries weighted by its negatives (it has no positive
    term to weigh), or a label with one positive left unweighted."""
    from tlsearch.train.losses import positive_weights

    positives = torch.tensor([0.0, 1.0, 10.0])
    torch.testing.assert_close(
        positive_weights(positives, total=20, scheme="inverse"), torch.tensor([1.0, 19.0, 1.0])
    )
    effective = positive_weights(positives, total=20, scheme="effective", beta=0.9)
    torch.testing.assert_close(effective, torch.tensor([1.0, (1 - 0.9**19) / (1 - 0.9), 1.0]))


def test_focal_multilabel_loss_weighs_the_positive_term_by_the_class_weights() -> None:
    """Bug caught: ``focal_gamma`` with ``class_weighting`` dropping the positives' weights (or
    weighting the negatives' term as well), where BCE's ``pos_weight`` weighs only the positives."""
    from tlsearch.train.losses import positive_weights

    torch.manual_seed(1)
    logits = torch.randn(30, 3)
    targets = (torch.rand(30, 3) < torch.tensor([0.5, 0.3, 0.1])).float()
    targets[0] = 1.0
    positives = targets.sum(dim=0)
    w = positive_weights(positives, total=30, scheme="inverse")
    p = torch.sigmoid(logits)
    by_hand = -(w * targets * (1 - p) ** 2 * p.log() + (1 - targets) * p**2 * (1 - p).log()).mean()
    options = {"focal_gamma": 2.0, "class_weighting": "inverse"}
    loss = multilabel_loss(logits, targets, options=options, positives=positives, total=30)
    torch.testing.assert_close(loss, by_hand)
