"""DELTA's channel attention (Li et al., ICLR 2019): measured once from the starting model, from the
loss increase when each channel is zeroed, softmax-normalised; the penalty weights each channel's
feature-map change by it. A constructed backbone makes the important channel known in advance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tlsearch_builtins.regularizers import DELTA
from tlsearch_builtins.regularizers._penalties import POOLED
from torch import nn

from tlsearch.data import DecodedImages, ImageList
from tlsearch.kinds import BuiltBackbone, TransferModel
from tlsearch.preprocessing import DataConfig
from tlsearch.testing import TrainEverything
from tlsearch.train import Trainer, TrainSettings

SIZE = 8
CONFIG = DataConfig(input_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class _FourChannels(nn.Module):
    """A 1×1 convolution to four channels, then global average pooling. Channel 0 is red − blue
    (what the classes differ by), 1 and 2 see only the green noise, 3 is a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.stage.weight.copy_(
                torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]).view(
                    4, 3, 1, 1
                )
            )
            self.stage.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(x).mean(dim=(2, 3))


def _model() -> TransferModel:
    built = BuiltBackbone(_FourChannels(), 4, CONFIG, [["stage.weight", "stage.bias"]])
    torch.manual_seed(0)
    return TransferModel(built, nn.Linear(4, 2))


def _data(n: int, seed: int) -> DecodedImages:
    """Class 0 red, class 1 blue (with some overlap); green is noise unrelated to the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = np.empty((n, SIZE, SIZE, 3))
    for i, y in enumerate(labels):
        shift = rng.normal(0.25 if y == 0 else -0.25, 0.15)
        images[i, ..., 0], images[i, ..., 2] = 0.5 + shift, 0.5 - shift
        images[i, ..., 1] = rng.uniform(0.1, 0.9)
    images = np.clip(images + rng.normal(0, 0.05, images.shape), 0, 1)
    return DecodedImages(
        (images * 255).astype(np.uint8), labels.astype(np.int64), ImageList([], [], ["r", "b"])
    )


def test_the_trainer_measures_attention_that_favours_the_channel_whose_removal_hurts() -> None:
    reg = DELTA(strength=0.01, layers="groups")
    trainer = Trainer(
        _model(),
        strategy=TrainEverything(),
        regularizers=[reg],
        num_outputs=2,
        settings=TrainSettings(epochs=1, batch_size=8, lr=0.0, augment=False),
    )
    trainer.fit(_data(32, 0), _data(8, 1))
    assert set(reg.attention) == {"stage", POOLED}
    for weights in reg.attention.values():
        assert weights.shape == (4,)
        assert float(weights.sum()) == pytest.approx(1.0)  # a softmax over the channels
        assert int(weights.argmax()) == 0  # red − blue: the channel the task needs
        assert float(weights[0]) > 1.3 * float(weights[1:].max())  # not uniform


@pytest.mark.parametrize("channel", [0, 3])
def test_penalty_is_zero_at_the_start_and_weights_each_channels_change_by_its_attention(channel: int) -> None:
    model = _model().eval()
    reg = DELTA(strength=0.5, layers="groups")
    reg.setup(model, num_outputs=2, task="classification")
    data = _data(32, 0)
    x = (torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    reg.calibrate(model, batches=[(x, torch.from_numpy(data.targets))], num_outputs=2, task="classification")
    try:
        assert float(reg.penalty(model, images=x, features=model.forward_features(x))) == 0.0
        with torch.no_grad():
            model.backbone.stage.bias[channel] += 0.3  # that channel's map and pooled feature move by 0.3
        term = float(reg.penalty(model, images=x, features=model.forward_features(x)))
        weights = float(reg.attention["stage"][channel] + reg.attention[POOLED][channel])
        assert term == pytest.approx(0.5 * weights * 0.3**2, rel=1e-4)
    finally:
        reg.teardown(model)
    assert (reg.attention["stage"][0] > reg.attention["stage"][3]).item()  # the same change costs more on 0


def test_regression_attention_uses_a_ridge_probe() -> None:
    """Regression: the important channel is the one the (standardised) target is read from."""
    model = _model().eval()
    data = _data(32, 0)
    x = (torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        target = model.forward_features(x)[:, :1] * 2.0  # a function of channel 0 only
    reg = DELTA(strength=0.1, layers="pooled")
    reg.setup(model, num_outputs=1, task="regression")
    reg.calibrate(
        model, batches=[(x, (target - target.mean()) / target.std())], num_outputs=1, task="regression"
    )
    reg.teardown(model)
    assert set(reg.attention) == {POOLED}
    assert int(reg.attention[POOLED].argmax()) == 0
