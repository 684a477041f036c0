"""Classification metrics (balanced accuracy, macro-F1, top-k accuracy, log loss) against
scikit-learn's definitions, and ``search.metric`` checked against the task's table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from tlsearch.config import METRICS, StudyConfig
from tlsearch.train import evaluate_outputs
from tlsearch.train.metrics import per_class_table

sklearn_metrics = pytest.importorskip("sklearn.metrics")
# sklearn warns about a class predicted but absent from the targets: the case these tests construct
pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true:UserWarning")


def _imbalanced(seed: int, *, classes: int = 6, n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels where class 0 dominates, one class never occurs and one is never predicted."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.multinomial(torch.tensor([10.0, 3, 2, 1, 1, 0]), n, replacement=True, generator=g)
    outputs = torch.randn(n, classes, generator=g)
    outputs[torch.arange(n), targets] += 1.0  # better than chance
    outputs[:, 4] = outputs.min(dim=1).values - 0.5  # class 4 is never predicted
    return outputs, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_scikit_learn(seed: int) -> None:
    """Bugs caught: balanced accuracy over all classes (a class absent from the targets counted as
    recall 0), macro-F1 skipping a never-predicted class, top-k off by one, log loss of logits not
    of probabilities."""
    outputs, targets = _imbalanced(seed)
    y, scores = targets.numpy(), outputs.numpy()
    predicted = scores.argmax(axis=1)
    probs = torch.softmax(outputs.double(), dim=1).numpy()
    metrics = evaluate_outputs(outputs, targets, task="classification", top_k=3)
    assert metrics["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, predicted))
    assert metrics["balanced_accuracy"] == pytest.approx(
        sklearn_metrics.balanced_accuracy_score(y, predicted)
    )
    assert metrics["macro_f1"] == pytest.approx(
        sklearn_metrics.f1_score(y, predicted, average="macro", zero_division=0)
    )
    assert metrics["top_k_accuracy"] == pytest.approx(
        sklearn_metrics.top_k_accuracy_score(y, scores, k=3, labels=np.arange(6))
    )
    assert metrics["log_loss"] == pytest.approx(
        sklearn_metrics.log_loss(y, probs, labels=np.arange(6)), rel=1e-5
    )
    assert metrics["balanced_accuracy"] != pytest.approx(metrics["accuracy"])  # the set is imbalanced


def test_top_k_is_capped_at_the_number_of_classes() -> None:
    """Bug caught: ``topk`` with k larger than the class count raises instead of scoring 1."""
    outputs = torch.tensor([[0.0, 1.0, 2.0], [3.0, 1.0, 0.0]])
    metrics = evaluate_outputs(outputs, torch.tensor([0, 2]), task="classification", top_k=5)
    assert metrics["top_k_accuracy"] == 1.0
    top1 = evaluate_outputs(outputs, torch.tensor([0, 2]), task="classification", top_k=1)
    assert top1["top_k_accuracy"] == top1["accuracy"] == 0.0


def test_per_class_table_matches_scikit_learn_report() -> None:
    """Bugs caught: precision and recall swapped; support counted from the predictions."""
    outputs, targets = _imbalanced(3)
    predicted = outputs.argmax(dim=1)
    names = [f"c{i}" for i in range(6)]
    rows = per_class_table(predicted, targets, classes=names)
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(
        targets.numpy(), predicted.numpy(), labels=np.arange(6), zero_division=0
    )
    assert [row["class"] for row in rows] == names
    assert [row["support"] for row in rows] == list(s)
    assert [row["precision"] for row in rows] == pytest.approx(list(p))
    assert [row["recall"] for row in rows] == pytest.approx(list(r))
    assert [row["f1"] for row in rows] == pytest.approx(list(f))


def _study(**search: object) -> dict[str, object]:
    return {
        "name": "s",
        "data": {"folder": "data"},
        "space": {"backbone": ["resnet18"]},
        "search": search,
    }


@pytest.mark.parametrize("metric", ["balanced_accuracy", "macro_f1", "top_k_accuracy", "log_loss"])
def test_search_metric_accepts_each_classification_metric(metric: str) -> None:
    config = StudyConfig.model_validate(_study(metric=metric))
    assert config.metric == metric
    assert config.direction == ("minimize" if metric == "log_loss" else "maximize")


def test_a_metric_of_another_task_is_a_config_error_naming_the_choices() -> None:
    """Bug caught: a regression metric accepted for classification, failing only in a trial."""
    with pytest.raises(ValidationError) as info:
        StudyConfig.model_validate(_study(metric="r2"))
    message = str(info.value)
    assert "'r2'" in message
    for name in METRICS["classification"]:
        assert name in message


def test_the_trainer_records_the_kept_epochs_per_class_counts() -> None:
    """Bugs caught: counts of the training set instead of validation; counts of the last epoch when
    an earlier one is kept; a class left out of the table."""
    from tlsearch.testing import TrainEverything, synthetic_images, tiny_transfer_model
    from tlsearch.testing._loop import decoded_images
    from tlsearch.train.loop import Trainer, TrainSettings

    images, targets = synthetic_images(24, num_classes=3, size=16)
    model = tiny_transfer_model(num_outputs=3)
    train = decoded_images(images[:18], targets[:18], model.data_config)
    val_targets = torch.tensor([0, 0, 0, 0, 1, 2])
    val = decoded_images(images[18:], val_targets, model.data_config)
    settings = TrainSettings(epochs=3, batch_size=6, compile="never", feature_cache=False, precision="fp32")
    trainer = Trainer(model, strategy=TrainEverything(), num_outputs=3, settings=settings)
    result = trainer.fit(train, val)
    counts = torch.tensor(result.extras["per_class_counts"])
    assert counts[:, 1].tolist() == [4, 1, 1]  # support: the validation labels
    assert int(counts[:, 2].sum()) == 6  # every validation image predicted once
    kept = result.metrics
    assert float(counts[:, 0].sum()) / 6 == pytest.approx(kept["accuracy"])
    rows = per_class_table(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), classes=["a"])
    assert rows == [{"class": "a", "support": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}]
