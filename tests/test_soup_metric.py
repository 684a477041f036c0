"""A soup is judged on the study's own metric, whichever it is, in the study's direction: the soup's
validation measures every metric a study can optimise, as the trainer does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tlsearch.config import METRICS
from tlsearch.data import DecodedImages, ImageList
from tlsearch.search.soup import validation_metrics
from tlsearch.testing import tiny_transfer_model
from tlsearch.train import Trainer, TrainSettings
from tlsearch.train.targets import TargetScale


def _images(n: int, targets: np.ndarray) -> DecodedImages:
    pixels = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return DecodedImages(pixels, targets, ImageList([Path(f"{i}.png") for i in range(n)], list(targets)))


def _trainer(model, *, task: str, scale: TargetScale | None = None, loss: str = "auto") -> Trainer:
    settings = TrainSettings(epochs=1, batch_size=8, lr=1e-3, precision="fp32", loss=loss)
    return Trainer(
        model,
        strategy=_full(),
        task=task,
        num_outputs=model.head.out_features,
        settings=settings,
        target_scale=scale,
    )


def _full():
    from tlsearch_builtins.freezing._static import FullFinetune

    return FullFinetune()


def test_every_classification_metric_is_measured_as_the_trainer_measures_it() -> None:
    """Bug caught: a metric (val_loss, macro_f1, log_loss) missing, so a soup could not be judged on it."""
    targets = np.arange(24) % 3
    images = _images(24, targets)
    model = tiny_transfer_model(num_outputs=3, seed=1).eval()
    ours = validation_metrics(model, images, config=model.data_config, task="classification")
    trainer = _trainer(model, task="classification")
    theirs = trainer.evaluate(torch.from_numpy(images.images).permute(0, 3, 1, 2), torch.from_numpy(targets))
    assert set(METRICS["classification"]) <= set(ours)
    for name in METRICS["classification"]:
        assert ours[name] == pytest.approx(theirs[name], rel=1e-4, abs=1e-5), name


@pytest.mark.parametrize("loss", ["auto", "huber"])
def test_regression_val_loss_is_the_trainers_on_the_standardised_scale(loss: str) -> None:
    """Bug caught: val_loss in the original units, or always MSE when the study trains with Huber."""
    targets = np.random.default_rng(1).normal(50.0, 20.0, (24, 1)).astype(np.float32)
    scale = TargetScale.of(targets)
    images = _images(24, targets)
    model = tiny_transfer_model(num_outputs=1, seed=2).eval()
    ours = validation_metrics(
        model, images, config=model.data_config, task="regression", scale=scale, loss=loss
    )
    trainer = _trainer(model, task="regression", scale=scale, loss=loss)
    theirs = trainer.evaluate(torch.from_numpy(images.images).permute(0, 3, 1, 2), torch.from_numpy(targets))
    assert set(METRICS["regression"]) <= set(ours)
    for name in METRICS["regression"]:
        assert ours[name] == pytest.approx(theirs[name], rel=1e-4, abs=1e-5), name


@pytest.mark.slow
def test_a_study_on_log_loss_gets_a_soup_judged_on_log_loss(write_study, tmp_path: Path) -> None:
    """Bug caught: soups limited to a few metrics ("no soup: it is chosen on accuracy, …"), or a
    minimised metric compared as if it were maximised."""
    from tlsearch.data import load_splits
    from tlsearch.search import run_study
    from tlsearch.search.best import _soup, best_trial
    from tlsearch.search.checkpoint import load_checkpoint
    from tlsearch.search.study_dir import StudyDir

    study = write_study(
        space={"freezing": ["linear_probe"], "regularizers": {}},
        training={"epochs": 1},
        search={"n_trials": 2, "metric": "log_loss"},
    )
    out = tmp_path / "out"
    result = run_study(study, out_dir=out, progress=False)
    config = StudyDir(out).load_config()
    assert config.direction == "minimize"
    chosen = best_trial(result.study)
    model, record = load_checkpoint(StudyDir(out).trial_dir(chosen.number), result.pm.registry)
    _, val = load_splits(config.data, task=config.task, seed=0, resolve=config.resolve_path)
    info, _ = _soup(
        result.study, chosen, model, record, config=config, study_dir=StudyDir(out), pm=result.pm, val=val
    )
    assert "no soup: it is chosen on" not in info["reason"]
    assert info["tried"], info  # the second trial was mixed in and scored
    assert info["metrics"]["log_loss"] == pytest.approx(info["value"])
    assert info["value"] <= info["single_value"]  # lower is better: kept only when it lowers log loss


def test_every_multilabel_metric_is_measured_as_the_trainer_measures_it() -> None:
    """Bug caught: a multi-label soup judged without mAP or val_loss (BCE), so it could not be formed
    on the study's metric, or its val_loss differed from the trainer's."""
    rng = np.random.default_rng(2)
    vectors = (rng.random((24, 3)) < 0.4).astype(np.float32)
    vectors[0] = 1.0  # every label has a positive
    pixels = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    listed = ImageList(
        [Path(f"{i}.png") for i in range(24)], vectors.tolist(), classes=["a", "b", "c"], task="multilabel"
    )
    images = DecodedImages(pixels, vectors, listed)
    model = tiny_transfer_model(num_outputs=3, seed=1).eval()
    ours = validation_metrics(model, images, config=model.data_config, task="multilabel")
    trainer = _trainer(model, task="multilabel")
    theirs = trainer.evaluate(torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(vectors))
    assert set(METRICS["multilabel"]) <= set(ours)
    for name in METRICS["multilabel"]:
        assert ours[name] == pytest.approx(theirs[name], rel=1e-4, abs=1e-5), name
