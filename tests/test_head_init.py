"""A head module's optional ``init_from_data(features, targets)``: the trainer calls it once, before
the first step, with the training set's pooled features and targets (kinds.Head's contract)."""

from __future__ import annotations

import torch
from torch import nn

from tlsearch.kinds import FreezingStrategy, ParamGroup, TransferModel
from tlsearch.kinds.freezing import set_trainable
from tlsearch.testing import TinyBackbone, TrainEverything, synthetic_images, train_and_record
from tlsearch.testing._loop import decoded_images
from tlsearch.train import Trainer, TrainSettings


class MeanInitHead(nn.Linear):
    """A linear head that records what ``init_from_data`` got and sets its weights to the class means."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def init_from_data(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        assert not torch.is_grad_enabled()
        self.calls.append((features, targets))
        for c in range(self.out_features):
            self.weight[c] = features[targets == c].mean(0)
        self.bias.zero_()


class FrozenBackbone(FreezingStrategy):
    """The backbone frozen (feature cache on), the head trains."""

    name = "frozen_backbone"
    backbone_frozen = True

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        set_trainable(model.backbone.parameters(), False)
        return [ParamGroup("head", model.head_parameters(), 1.0)]


def _model() -> TransferModel:
    torch.manual_seed(0)
    built = TinyBackbone().build()
    return TransferModel(built, MeanInitHead(built.num_features, 3))


def test_the_trainer_gives_the_head_the_training_features_before_the_first_step() -> None:
    model = _model()
    start = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    images, labels = synthetic_images(16, size=16)
    records = train_and_record(model, TrainEverything(), images=images, targets=labels, epochs=2)
    assert len(model.head.calls) == 1, "called once per trial, not per epoch"
    features, targets = model.head.calls[0]
    assert features.shape == (16, model.num_features) and features.dtype == torch.float32
    assert torch.equal(targets, labels)
    # the pooled features at the starting weights, un-augmented, in eval mode
    reference = _model()
    reference.backbone.load_state_dict(start, strict=False)
    reference.eval()
    with torch.no_grad():
        train = decoded_images(images, labels, reference.data_config)
        x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
        mean = torch.tensor(reference.data_config.mean).view(1, 3, 1, 1)
        std = torch.tensor(reference.data_config.std).view(1, 3, 1, 1)
        expected = reference.forward_features((x - mean) / std)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
    # the first step starts from the initialised head: the class means, bias 0
    first = records[0].before
    for c in range(3):
        torch.testing.assert_close(first["param:head.weight"][c], features[labels == c].mean(0))
    assert torch.equal(first["param:head.bias"], torch.zeros(3))


def test_on_cached_features_the_head_gets_the_cached_features() -> None:
    model = _model()
    images, labels = synthetic_images(12, size=16)
    train = decoded_images(images, labels, model.data_config)
    settings = TrainSettings(
        epochs=1, batch_size=4, lr=1e-2, compile="never", precision="fp32", loader_workers=0
    )
    trainer = Trainer(model, strategy=FrozenBackbone(), num_outputs=3, settings=settings)
    result = trainer.fit(train, train)
    assert result.used_feature_cache
    assert result.extras["head_init_from_data"] is True
    features, targets = model.head.calls[0]
    assert features.shape == (12, model.num_features) and torch.equal(targets, labels)
    assert not features.is_inference()


def test_a_head_without_the_method_is_left_as_built() -> None:
    torch.manual_seed(0)
    built = TinyBackbone().build()
    model = TransferModel(built, nn.Linear(built.num_features, 3))
    images, labels = synthetic_images(8, size=16)
    settings = TrainSettings(epochs=1, batch_size=4, lr=1e-2, compile="never", precision="fp32")
    result = Trainer(model, strategy=TrainEverything(), num_outputs=3, settings=settings).fit(
        decoded_images(images, labels, model.data_config), decoded_images(images, labels, model.data_config)
    )
    assert "head_init_from_data" not in result.extras
