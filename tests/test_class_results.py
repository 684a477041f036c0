"""Per-class results of a classification trial: the confusion matrix (capped for many classes), the
worst validation images, kept for the epoch whose weights the trial keeps, recorded as trial attrs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tlsearch.report._classes import confused_pairs, normalised_rows
from tlsearch.train.class_results import (
    MAX_DENSE_CLASSES,
    TOP_CONFUSED_CELLS,
    class_results,
    confusion_record,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _logits(n: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g) * 3, torch.randint(classes, (n,), generator=g)


def test_the_confusion_matrix_is_scikit_learns() -> None:
    """Bug caught: rows and columns swapped (true × predicted is scikit-learn's layout)."""
    outputs, targets = _logits(200, 7)
    results = class_results(outputs, targets)
    expected = sklearn_metrics.confusion_matrix(targets.numpy(), outputs.argmax(1).numpy(), labels=range(7))
    np.testing.assert_array_equal(results.confusion.numpy(), expected)
    assert confusion_record(results.confusion) == expected.tolist()


def test_the_worst_images_are_the_lowest_probability_of_their_true_class() -> None:
    """Bug caught: ranked by the predicted class's probability (or the highest first)."""
    outputs, targets = _logits(50, 4, seed=1)
    worst = class_results(outputs, targets).worst
    probabilities = np.exp(outputs.numpy()) / np.exp(outputs.numpy()).sum(1, keepdims=True)
    true_p = probabilities[np.arange(50), targets.numpy()]
    assert [w[0] for w in worst] == np.argsort(true_p, kind="stable")[:12].tolist()
    for index, true, predicted, p in worst:
        assert true == targets[index] and predicted == outputs[index].argmax()
        assert p == pytest.approx(true_p[index], rel=1e-5)
    assert len(class_results(outputs[:5], targets[:5]).worst) == 5  # fewer images than 12


def test_worst_images_tied_at_the_same_probability_keep_their_validation_order() -> None:
    """Bug caught: an unstable sort (``stable=False`` reorders ties from 17 elements on), so the worst
    images of a run with many hopeless ones (probability 0) would be an arbitrary, shuffled subset."""
    n = 40
    outputs, targets = torch.zeros(n, 3), torch.zeros(n, dtype=torch.long)
    outputs[::2, 1] = 200.0  # every even image: the true class's probability underflows to exactly 0
    worst = class_results(outputs, targets).worst
    assert [w[0] for w in worst] == list(range(0, 24, 2))
    assert all(w[3] == 0.0 for w in worst)


def test_many_classes_keep_only_the_largest_confused_cells_and_say_so() -> None:
    """Bug caught: a 150×150 matrix stored in every trial, or the smallest cells kept."""
    classes = MAX_DENSE_CLASSES + 50
    outputs, targets = _logits(4000, classes, seed=2)
    results = class_results(outputs, targets)
    record = confusion_record(results.confusion)
    assert isinstance(record, dict) and "only the" in record["note"]
    assert len(record["cells"]) == TOP_CONFUSED_CELLS
    off = results.confusion.clone().fill_diagonal_(0)
    assert (
        sorted((n for _, _, n in record["cells"]), reverse=True)
        == sorted(off.flatten().tolist(), reverse=True)[:TOP_CONFUSED_CELLS]
    )
    for t, p, n in record["cells"][:20]:
        assert off[t, p] == n
    labels = [f"c{i}" for i in range(classes)]
    top = confused_pairs(record, labels=labels, limit=3)
    dense = confused_pairs(results.confusion.tolist(), labels=labels, limit=3)
    assert [(q.true, q.predicted, q.count) for q in top] == [(q.true, q.predicted, q.count) for q in dense]
    assert top[0].share == pytest.approx(
        top[0].count / int(results.confusion[labels.index(top[0].true)].sum())
    )
    assert normalised_rows(record, classes=classes) is None


def test_the_dense_matrix_is_kept_up_to_the_cap_and_every_single_confusion_counts() -> None:
    """Bugs caught: a study of exactly ``MAX_DENSE_CLASSES`` classes losing its matrix; a cell
    confused once left out of the capped record (only cells above 1 counted)."""
    dense = torch.eye(MAX_DENSE_CLASSES, dtype=torch.long)
    assert confusion_record(dense) == dense.tolist()
    many = torch.eye(MAX_DENSE_CLASSES + 1, dtype=torch.long) * 5
    many[0, 1] = many[2, 3] = 1  # two images confused once each, the only confusions
    record = confusion_record(many)
    assert isinstance(record, dict) and sorted(record["cells"]) == [[0, 1, 1], [2, 3, 1]]


def test_confused_pairs_and_normalised_rows_read_the_recorded_matrix() -> None:
    """Bug caught: the diagonal (correct images) listed as a confusion, or rows normalised by columns."""
    matrix = [[8, 2, 0], [5, 5, 0], [0, 1, 0]]
    pairs = confused_pairs(matrix, labels=["a", "b", "c"])
    assert [(p.true, p.predicted, p.count) for p in pairs] == [("b", "a", 5), ("a", "b", 2), ("c", "b", 1)]
    assert pairs[0].share == pytest.approx(0.5) and pairs[2].share == pytest.approx(1.0)
    assert normalised_rows(matrix, classes=3) == [[0.8, 0.2, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]
    assert confused_pairs([[1, 2]], labels=["a", "b"]) == []  # not a 2×2 matrix: nothing, no crash


def test_the_trainer_keeps_the_kept_epochs_confusion_and_worst_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bug caught: the last epoch's results when an earlier epoch's weights are kept, or the
    training images' instead of validation's."""
    from tlsearch.testing import TrainEverything, synthetic_images, tiny_transfer_model
    from tlsearch.testing._loop import decoded_images
    from tlsearch.train import loop as loop_module
    from tlsearch.train.loop import Trainer, TrainSettings

    # The middle epoch is the best whatever the numerics (which vary with the thread count): the
    # real evaluation runs, its accuracy is replaced (and val_loss made a tie).
    real, scripted = loop_module.Trainer._evaluate, iter([0.5, 0.9, 0.6])

    def evaluate(self: Trainer, source, **options) -> dict[str, float]:  # type: ignore[no-untyped-def]
        metrics = real(self, source, **options)
        return {**metrics, "accuracy": next(scripted), "val_loss": 1.0}

    monkeypatch.setattr(loop_module.Trainer, "_evaluate", evaluate)

    images, targets = synthetic_images(40, num_classes=3, size=16)
    model = tiny_transfer_model(num_outputs=3)
    train = decoded_images(images[:26], targets[:26], model.data_config)
    val = decoded_images(images[26:], targets[26:], model.data_config)
    settings = TrainSettings(
        epochs=3, batch_size=6, lr=0.05, compile="never", feature_cache=False, precision="fp32"
    )
    result = Trainer(model, strategy=TrainEverything(), num_outputs=3, settings=settings).fit(train, val)
    assert result.best_epoch == 1 and len(result.history) == 3  # an earlier epoch is kept
    assert result.class_results is not None
    with torch.no_grad():  # the model holds the kept epoch's weights
        outputs = model.eval()(train_inputs(val, model))
    expected = class_results(outputs, targets[26:])
    assert torch.equal(result.class_results.confusion, expected.confusion)
    assert [w[:3] for w in result.class_results.worst] == [w[:3] for w in expected.worst]
    assert int(result.class_results.confusion.sum()) == 14


def train_inputs(val, model) -> torch.Tensor:
    from tlsearch.data.augment import Normalizer

    pixels = torch.from_numpy(val.images).permute(0, 3, 1, 2)
    return Normalizer(model.data_config, device=pixels.device)(pixels)


@pytest.mark.slow
def test_a_trial_records_confusion_and_worst_images_relative_to_the_data_root(
    write_study, shapes_dir: Path, tmp_path: Path
) -> None:
    """Bugs caught: attrs missing, absolute paths, labels of the wrong index, rows that do not sum
    to the validation images of each class."""
    from tlsearch.search import run_study

    study = write_study(space={"freezing": ["linear_probe"], "regularizers": {}}, search={"n_trials": 1})
    trial = run_study(study, out_dir=tmp_path / "out", progress=False).study.trials[0]
    attrs = trial.user_attrs
    labels = [row["class"] for row in attrs["per_class"]]
    confusion = attrs["confusion"]
    assert [sum(row) for row in confusion] == [row["support"] for row in attrs["per_class"]]
    assert [confusion[i][i] for i in range(len(labels))] == [
        round(row["recall"] * row["support"]) for row in attrs["per_class"]
    ]
    worst = attrs["worst_images"]
    assert len(worst) == 12
    assert [w["probability"] for w in worst] == sorted(w["probability"] for w in worst)
    for w in worst:
        assert not Path(w["path"]).is_absolute()
        assert (shapes_dir / "val" / w["path"]).is_file()
        assert w["path"].split("/")[0] == w["true"]  # the class folder is the true label
        assert w["predicted"] in labels
