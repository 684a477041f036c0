"""The prototype head passes the head contract, and ``init_from_data`` makes it a nearest-class-mean
classifier before any step, also when the real trainer calls it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tlsearch_example_plugin.head import PrototypeHead

from tlsearch.testing import (
    HeadContract,
    TinyBackbone,
    TrainEverything,
    synthetic_images,
    tiny_transfer_model,
    train_and_record,
)


class TestPrototypeHead(HeadContract):
    plugin = PrototypeHead
    params = {"scale": 10.0, "dropout": 0.1}


def _nearest_class_mean(features: torch.Tensor, targets: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    centre = features.mean(0)
    means = torch.stack([F.normalize(features[targets == c] - centre, dim=-1).mean(0) for c in range(3)])
    return (F.normalize(queries - centre, dim=-1) @ F.normalize(means, dim=-1).T).argmax(1)


def test_init_from_data_classifies_by_the_nearest_class_mean() -> None:
    torch.manual_seed(0)
    centres = 3 * torch.randn(3, 8)
    targets = torch.arange(60) % 3
    features = centres[targets] + torch.randn(60, 8)
    head = PrototypeHead().build(8, 3)
    with torch.no_grad():
        head.init_from_data(features, targets)
        queries = centres[torch.arange(30) % 3] + torch.randn(30, 8)
        predicted = head(queries).argmax(1)
    assert torch.equal(predicted, _nearest_class_mean(features, targets, queries))
    assert (predicted == torch.arange(30) % 3).float().mean() > 0.9


def test_regression_targets_leave_the_head_as_built() -> None:
    head = PrototypeHead().build(8, 1)
    before = head.weight.detach().clone()
    with torch.no_grad():
        head.init_from_data(torch.randn(10, 8), torch.randn(10, 1))
    assert torch.equal(head.weight, before)


def test_the_trainer_initialises_it_from_the_training_features() -> None:
    images, labels = synthetic_images(24, size=16)
    model = tiny_transfer_model(TinyBackbone(), head=PrototypeHead().build(32, 3))
    model.eval()
    with torch.no_grad():
        start_features = model.forward_features(images)
    records = train_and_record(model, TrainEverything(), images=images, targets=labels, epochs=1)
    start = records[0].before  # when the first step is about to run
    centre = start["buffer:head.centre"]
    assert not torch.equal(centre, torch.zeros_like(centre))
    # the uint8 round trip of train_and_record changes the features slightly
    torch.testing.assert_close(centre, start_features.mean(0), rtol=0.05, atol=0.05)
