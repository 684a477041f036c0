"""Regression targets: standardised for training, metrics and predictions in the original units."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tlsearch.data import DecodedImages, ImageList
from tlsearch.testing import TrainEverything, tiny_transfer_model
from tlsearch.train import TargetScale, Trainer, TrainSettings


def test_scale_is_the_training_targets_mean_and_std_and_a_constant_column_keeps_std_one() -> None:
    scale = TargetScale.of([[1000.0, 5.0], [3000.0, 5.0]])
    assert scale.mean == (2000.0, 5.0)
    assert scale.std == (1000.0, 1.0)  # a constant column: no division by zero
    standard = scale.standardise(np.array([[1000.0, 5.0], [3000.0, 6.0]]))
    np.testing.assert_allclose(standard, [[-1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(scale.restore(torch.from_numpy(standard)).numpy(), [[1000, 5], [3000, 6]])
    assert TargetScale.from_dict(scale.to_dict()) == scale
    with pytest.raises(ValueError, match="std > 0"):
        TargetScale(mean=(0.0,), std=(0.0,))


def _decoded(targets: np.ndarray, seed: int) -> DecodedImages:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (len(targets), 32, 32, 3), dtype=np.uint8)
    source = ImageList([], [], None, ["price"])
    return DecodedImages(images, targets.astype(np.float32).reshape(-1, 1), source)


def test_metrics_of_a_mean_predictor_are_in_the_targets_units() -> None:
    """A head that outputs 0 on the standardised scale predicts the training mean: its MAE and RMSE
    are the validation targets' spread around that mean (hundreds here), not ≈ 1."""
    rng = np.random.default_rng(0)
    train_y, val_y = 1000 + 500 * rng.uniform(0, 1, 24), 1000 + 500 * rng.uniform(0, 1, 12)
    scale = TargetScale.of(train_y.reshape(-1, 1))
    head = nn.Linear(32, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    model = tiny_transfer_model(num_outputs=1, head=head)
    trainer = Trainer(
        model,
        strategy=TrainEverything(),
        task="regression",
        num_outputs=1,
        settings=TrainSettings(epochs=1, batch_size=8, lr=0.0, augment=False, feature_cache=False),
        target_scale=scale,
    )
    metrics = trainer.fit(_decoded(train_y, 0), _decoded(val_y, 1)).metrics
    error = val_y - train_y.mean()
    assert metrics["mae"] == pytest.approx(np.abs(error).mean(), rel=1e-4)
    assert metrics["rmse"] == pytest.approx(np.sqrt((error**2).mean()), rel=1e-4)
    assert metrics["mae"] > 50  # the targets' units, not standard deviations
    # val_loss is the training loss on the standardised scale (documented in tlsearch.train.targets)
    assert metrics["val_loss"] == pytest.approx(((error / train_y.std()) ** 2).mean(), rel=1e-4)


def test_predictor_applies_a_scale_only_when_the_graph_does_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """export_onnx(target_scale=…) puts ``y · std + mean`` in the graph (metadata ``in_graph``: Predictor
    leaves the values alone); a file that only records the scale gets it applied by Predictor."""
    from tlsearch.deploy import Predictor
    from tlsearch.export import export_onnx
    from tlsearch.preprocessing import DataConfig, normalize

    config = DataConfig(input_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1)).eval()
    images = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    scale = TargetScale(mean=(1000.0,), std=(250.0,))
    meta = {"task": "regression", "data_config": config.to_dict()}

    in_graph = export_onnx(
        model, path=tmp_path / "a.onnx", metadata=meta, validation_images=images, target_scale=scale
    )
    recorded = export_onnx(
        model,
        path=tmp_path / "b.onnx",
        metadata={**meta, "target_scale": {**scale.to_dict(), "in_graph": False}},
        validation_images=images,
    )
    for report in (in_graph, recorded):
        predictor = Predictor(report.path)
        prepared = np.stack([predictor.prepare(image) for image in images])  # resize + crop as deployed
        with torch.no_grad():
            standard = model(torch.from_numpy(normalize(prepared, config))).numpy()
        values = np.array([p.values for p in predictor.predict(list(images))])
        np.testing.assert_allclose(values, standard * 250.0 + 1000.0, rtol=1e-5)


def test_a_scale_without_one_finite_positive_std_per_column_is_refused() -> None:
    """Bugs caught: a scale read from a corrupt model.json (NaN, a missing column) silently used."""
    for mean, std in (((0.0, 1.0), (1.0,)), ((), ()), ((float("nan"),), (1.0,)), ((0.0,), (float("inf"),))):
        with pytest.raises(ValueError, match="target scale"):
            TargetScale(mean=mean, std=std)
    with pytest.raises(ValueError, match=r"\(N, T\) array, got shape \(3,\)"):
        TargetScale.of([1.0, 2.0, 3.0])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"got shape \(0, 1\)"):
        TargetScale.of(np.zeros((0, 1)))


def test_a_column_equal_up_to_rounding_counts_as_constant_and_a_small_spread_does_not() -> None:
    """Bug caught: the constant-column test made absolute (a column around 1e9 with rounding noise
    would be divided by its noise) or too loose (a real spread of 1e-6 replaced by 1)."""
    big = 1e9
    rounding = TargetScale.of([[big], [big + 1e-7], [big]])
    assert rounding.std == (1.0,)
    small = TargetScale.of([[0.0], [2e-6]])
    assert small.std == (pytest.approx(1e-6),) and small.mean == (pytest.approx(1e-6),)


def test_a_scale_cannot_be_changed_after_it_is_made() -> None:
    """Bug caught: one holder (Trainer, checkpoint, Predictor) editing the study's shared scale in
    place, or a scale skipping the checks of ``__post_init__`` by assignment."""
    import dataclasses

    scale = TargetScale.of([[1.0], [3.0]])
    with pytest.raises(dataclasses.FrozenInstanceError):
        scale.std = (0.0,)  # type: ignore[misc]
    assert hash(scale) == hash(TargetScale.of([[1.0], [3.0]]))
