"""Every training image is seen each epoch: the last partial batch is kept, and a final batch of
one image (which BatchNorm cannot train on) is merged into the one before."""

from __future__ import annotations

import pytest
import torch
from tlsearch_builtins.freezing._static import FullFinetune
from torch import nn

from tlsearch.testing._loop import decoded_images
from tlsearch.testing._tiny import TinyBackbone, synthetic_images, tiny_transfer_model
from tlsearch.train import Trainer, TrainSettings
from tlsearch.train.loop import training_batches


@pytest.mark.parametrize(("n", "sizes"), [(20, [8, 8, 4]), (17, [8, 9]), (16, [8, 8]), (1, [1])])
def test_training_batches_cover_every_image_once(n: int, sizes: list[int]) -> None:
    batches = training_batches(n, 8, generator=torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == sizes
    assert sorted(torch.cat(batches).tolist()) == list(range(n))


@pytest.mark.parametrize("n", [20, 17])
def test_a_trial_trains_on_every_image_each_epoch(n: int) -> None:
    images, labels = synthetic_images(n, size=16, num_classes=3, seed=0)
    config = TinyBackbone().build().data_config
    train, val = decoded_images(images, labels, config), decoded_images(images[:6], labels[:6], config)
    model = tiny_transfer_model(num_outputs=3)
    sizes: list[int] = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(
                lambda m, args: sizes.append(len(args[0])) if m.training else None
            )
    settings = TrainSettings(epochs=2, batch_size=8, precision="fp32", compile="never", loader_workers=0)
    result = Trainer(model, strategy=FullFinetune(), num_outputs=3, settings=settings).fit(train, val)
    assert [e["train_images"] for e in result.extras["epochs"]] == [float(n), float(n)]
    assert 1 not in sizes
