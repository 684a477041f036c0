"""TrainNorms passes tlsearch's freezing-strategy contract, and trains exactly the norm layers."""

from __future__ import annotations

from tlsearch_example_plugin import TrainNorms

from tlsearch.registry import get_plugin_manager
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


def test_only_norm_layers_and_the_head_train() -> None:
    model = tiny_transfer_model(TinyBackbone())
    images, labels = synthetic_images(16, size=16)
    records = train_and_record(model, TrainNorms(), images=images, targets=labels, epochs=1)
    backbone = {n for n in records[0].trainable if n.startswith("backbone.")}
    # TinyBackbone's blocks are (conv, BatchNorm, ReLU): index 1 is the norm layer.
    assert backbone == {
        f"backbone.{g}.1.{p}" for g in ("stem", "stage1", "stage2") for p in ("weight", "bias")
    }
    assert records[0].lr_scales == {"norms": 3.0, "head": 1.0}


def test_registered_through_the_entry_point() -> None:
    info = get_plugin_manager().registry.get("freezing", "train_norms")
    assert info.cls is TrainNorms
    assert info.provider.package == "tlsearch-example-plugin"
