"""What decides whether a trial may reuse cached backbone features (``tlsearch.train.features``).

Reuse needs the same backbone (plugin, hyperparameters with its weights, build options), the same
images at the same geometry (input size, crop), the same weights' values and precision; a trial that
differs only in head, freezing or recipe must get the same key, or the cache is never hit.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from tlsearch.testing import decoded_images, synthetic_images, tiny_transfer_model
from tlsearch.train import backbone_identity, feature_key, trial_backbone_identity

CHOICES: dict[str, Any] = {
    "backbone": "timm",
    "backbone.timm.model": "resnet18",
    "backbone.timm.weights": "imagenet",
    "head": "linear",
    "head.linear.dropout": 0.1,
    "freezing": "linear_probe",
    "train.lr": 1e-3,
    "data.image_size": 224,
}


def test_the_same_trial_gives_the_same_identity() -> None:
    """Bug caught: an identity that depends on dict order or on a fresh object (the cache never hits)."""
    shuffled = dict(reversed(list(CHOICES.items())))
    assert trial_backbone_identity(CHOICES) == trial_backbone_identity(shuffled)
    assert trial_backbone_identity(CHOICES) == backbone_identity(
        "timm", {"weights": "imagenet", "model": "resnet18"}
    )


def test_head_freezing_and_recipe_do_not_change_the_identity() -> None:
    """Bug caught: the head's or the lr's choices leaking into the key, so no two trials share features."""
    other = {**CHOICES, "head": "mlp", "head.mlp.hidden": 64, "train.lr": 3e-4, "freezing": "full"}
    del other["head.linear.dropout"]
    assert trial_backbone_identity(other) == trial_backbone_identity(CHOICES)


def test_changed_weights_model_or_build_options_give_a_new_identity() -> None:
    """Bug caught: random and pretrained weights (or two models) sharing cached features."""
    base = trial_backbone_identity(CHOICES)
    assert trial_backbone_identity({**CHOICES, "backbone.timm.weights": "random"}) != base
    assert trial_backbone_identity({**CHOICES, "backbone.timm.model": "resnet34"}) != base
    assert trial_backbone_identity(CHOICES, {"drop_path_rate": 0.1}) != base
    # another backbone plugin's parameters (left from a conditional space) are not this backbone's
    assert trial_backbone_identity({**CHOICES, "backbone.torchvision.model": "vgg11"}) == base


def _key(model: Any, data_config: Any, *, identity: Any = None, precision: str = "fp32") -> str:
    images, labels = synthetic_images(6, size=data_config.input_size)
    train = decoded_images(images, labels, data_config)
    return feature_key(
        backbone=model.backbone,
        identity=identity if identity is not None else trial_backbone_identity(CHOICES),
        data_config=data_config,
        train=train,
        val=train,
        precision=precision,
    )


def test_feature_key_changes_with_image_size_crop_weights_and_precision() -> None:
    """Bugs caught: features of 224-pixel images served to a 288-pixel trial, of a center crop to a
    squashed one, of one weight initialisation to another."""
    model = tiny_transfer_model(seed=0)
    config = model.data_config
    base = _key(model, config)
    assert _key(model, config) == base
    assert _key(tiny_transfer_model(seed=0), config) == base  # same weights' values: same key
    assert _key(model, config.with_size(48)) != base
    assert _key(model, replace(config, crop_pct=1.0)) != base
    assert _key(model, replace(config, crop_mode="squash")) != base
    assert _key(tiny_transfer_model(seed=1), config) != base  # other weights' values
    assert _key(model, config, precision="bf16") != base
    assert (
        _key(model, config, identity=trial_backbone_identity({**CHOICES, "backbone.timm.weights": "x"}))
        != base
    )
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1.0)
    assert _key(model, config) != base
