"""TrainNorms passes tlsearch's freezing-strategy contract, and trains exactly the norm layers
(plus, with ``top_groups``, the last layer groups)."""

from __future__ import annotations

from tlsearch_example_plugin import TrainNorms

from tlsearch.testing import (
    FreezingStrategyContract,
    TinyBackbone,
    synthetic_images,
    tiny_transfer_model,
    train_and_record,
)


class TestTrainNorms(FreezingStrategyContract):
    """Inherits the checks: groups cover every trainable parameter, frozen parameters stay
    bit-identical, trained ones move, BatchNorm statistics follow the documented policy."""

    plugin = TrainNorms
    params = {"norm_lr_scale": 2.0}


class TestTrainNormsWithTheTopGroup(FreezingStrategyContract):
    plugin = TrainNorms
    params = {"norm_lr_scale": 2.0, "top_groups": 1}


def _train(strategy: TrainNorms) -> list:
    model = tiny_transfer_model(TinyBackbone())
    images, labels = synthetic_images(16, size=16)
    return train_and_record(model, strategy, images=images, targets=labels, epochs=1)


def test_only_norm_layers_and_the_head_train() -> None:
    records = _train(TrainNorms())
    backbone = {n for n in records[0].trainable if n.startswith("backbone.")}
    # TinyBackbone's blocks are (conv, BatchNorm, ReLU): index 1 is the norm layer.
    assert backbone == {
        f"backbone.{g}.1.{p}" for g in ("stem", "stage1", "stage2") for p in ("weight", "bias")
    }
    assert records[0].lr_scales == {"norms": 3.0, "head": 1.0}


def test_top_groups_train_the_last_layer_groups_entirely() -> None:
    records = _train(TrainNorms(top_groups=1))
    backbone = {n for n in records[0].trainable if n.startswith("backbone.")}
    norms = {f"backbone.{g}.1.{p}" for g in ("stem", "stage1") for p in ("weight", "bias")}
    last = {f"backbone.stage2.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    assert backbone == norms | last
    assert records[0].lr_scales == {"norms": 3.0, "top": 1.0, "head": 1.0}
