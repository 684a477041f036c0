"""What the plugin base classes of :mod:`tlsearch.kinds` promise plugin authors: how a plugin is
instantiated from its hyperparameters, the no-op defaults of the optional hooks, the transfer
model's layer-group check and forward path, and the default BatchNorm policy of a freezing strategy.

Each test names the one-line bug it catches. Tiny modules only.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tlsearch.kinds import Backbone, BuiltBackbone, FreezingStrategy, ParamGroup, Regularizer, TransferModel
from tlsearch.preprocessing import DataConfig
from tlsearch.space import Float, Int, Required
from tlsearch.testing import TinyBackbone


class _Probe(Regularizer):
    """Pulls the head towards zero.

    Second paragraph, not part of the summary.
    """

    name = "probe"
    hyperparameters = {"strength": Float(0.0, 1.0, default=0.1), "steps": Int(1, 9, default=3)}


class _NeedsModel(Backbone):
    name = "needs_model"
    hyperparameters = {"model": Required(str), "width": Int(1, 8, default=2)}

    def build(self, **options: Any) -> BuiltBackbone:  # pragma: no cover - never built here
        raise NotImplementedError


def test_a_plugin_takes_its_defaults_and_overrides_as_attributes() -> None:
    """Bugs caught: defaults not filled in; a given value losing to the default; attributes not set."""
    plugin = _Probe(strength=0.5)
    assert plugin.params == {"strength": 0.5, "steps": 3}
    assert (plugin.strength, plugin.steps) == (0.5, 3)  # type: ignore[attr-defined]
    assert repr(plugin) == "_Probe(strength=0.5, steps=3)"


def test_an_unknown_or_missing_hyperparameter_is_refused_naming_it() -> None:
    """Bugs caught: a typo'd hyperparameter silently ignored; a required setting left as None."""
    with pytest.raises(
        TypeError, match=r"unknown hyperparameter\(s\) \['strenght'\]; declared: \['steps', 'strength'\]"
    ):
        _Probe(strenght=0.5)
    with pytest.raises(TypeError, match=r"'needs_model' needs a value for \['model'\]"):
        _NeedsModel()
    assert _NeedsModel(model="resnet18").params == {"model": "resnet18", "width": 2}


def test_the_summary_is_the_docstrings_first_line_and_the_hooks_default_to_no_change() -> None:
    """Bugs caught: ``plugins list`` showing the whole docstring or nothing; a default hook dropping
    the study's overrides or space; a default regularizer changing the batch, the loss or the cache."""
    assert _Probe.summary() == "Pulls the head towards zero."
    assert _NeedsModel.summary() == ""
    overrides = {"strength": 0.2}
    assert _Probe.expand_overrides(overrides) == overrides
    space = {"strength": Float(0.0, 0.5)}
    assert _Probe.check_space(space, study_dir=None) == space
    assert _NeedsModel(model="m").describe() == {}
    probe = _Probe()
    assert probe.backbone_options() == probe.optimizer_options() == probe.loss_options() == {}
    assert list(probe.replaces_weight_decay(None)) == []  # type: ignore[arg-type]  # the Trainer iterates it
    images, targets = torch.ones(2, 3, 4, 4), torch.tensor([0, 1])
    out_images, out_targets = probe.transform_batch(images, targets, num_outputs=2)
    assert out_images is images and out_targets is targets
    assert probe.penalty(nn.Linear(1, 1), images=None, features=torch.ones(2, 1)) is None  # type: ignore[arg-type]
    assert not Regularizer.uses_inputs and Regularizer.calibration_images == 0  # keeps the feature cache


def _built(groups: list[list[str]]) -> BuiltBackbone:
    module = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    return BuiltBackbone(module, 2, DataConfig(input_size=8), groups)


def test_the_transfer_model_needs_every_backbone_parameter_in_exactly_one_group() -> None:
    """Bugs caught: a parameter no freezing strategy sees (it would never train or never freeze)."""
    complete = [["0.weight", "0.bias"], ["1.weight", "1.bias"]]
    TransferModel(_built(complete), nn.Linear(2, 1))
    for groups in (
        [["0.weight", "0.bias"], ["1.weight"]],  # 1.bias missing
        [*complete, ["2.weight"]],  # unknown
        [*complete, ["0.bias"]],  # twice
    ):
        with pytest.raises(ValueError, match="exactly once"):
            TransferModel(_built(groups), nn.Linear(2, 1))


def test_the_transfer_model_runs_the_head_on_the_backbones_features() -> None:
    """Bugs caught: ``forward`` skipping the head; the groups or head parameters not the model's own."""
    built = TinyBackbone().build()
    head = nn.Linear(built.num_features, 3)
    model = TransferModel(built, head)
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, built.num_features)
    torch.testing.assert_close(model(x), head(features))
    named = dict(built.module.named_parameters())
    assert model.backbone_groups() == [[named[n] for n in g] for g in built.layer_groups]
    assert model.head_parameters() == list(head.parameters())
    assert ParamGroup("head", model.head_parameters()).lr_scale == 1.0


class _TrainAll(FreezingStrategy):
    name = "train_all"

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        return [ParamGroup("all", list(model.parameters()))]


def test_the_default_batchnorm_policy_puts_only_fully_frozen_norm_layers_in_eval_mode() -> None:
    """Bugs caught: a partly trainable or parameter-free BatchNorm frozen; a frozen one updating its
    running statistics; a strategy claiming a frozen backbone (the feature cache) by default."""
    frozen, partly, trainable, no_params = (
        nn.BatchNorm2d(2),
        nn.BatchNorm2d(2),
        nn.BatchNorm2d(2),
        nn.BatchNorm2d(2, affine=False),
    )
    for p in frozen.parameters():
        p.requires_grad_(False)
    partly.bias.requires_grad_(False)
    model = nn.Sequential(frozen, partly, trainable, no_params).train()
    _TrainAll().set_train_mode(model)  # type: ignore[arg-type]
    assert [m.training for m in model] == [False, True, True, True]
    assert not FreezingStrategy.backbone_frozen


def test_freeze_stats_where_frozen_counts_a_parameter_free_batchnorm_as_frozen() -> None:
    """Unlike the base class's default (above), the helper the built-ins call documents a layer
    without parameters (``affine=False``) as frozen: its pretrained running statistics are kept.
    Bug caught: it following ``model.training`` and updating them."""
    from tlsearch.kinds.freezing import freeze_stats_where_frozen

    frozen, trainable, no_params = nn.BatchNorm2d(2), nn.BatchNorm2d(2), nn.BatchNorm2d(2, affine=False)
    for p in frozen.parameters():
        p.requires_grad_(False)
    model = nn.Sequential(frozen, trainable, no_params).train()
    freeze_stats_where_frozen(model)  # type: ignore[arg-type]
    assert [m.training for m in model] == [False, True, False]


def test_by_default_a_regularizer_is_off_only_where_it_needs_a_backbone_the_strategy_freezes() -> None:
    """Bug caught: the default ``applies_to`` inverted (a penalty on the backbone sampled for a
    linear probe, and skipped where it would act)."""

    class Frozen(_TrainAll):
        backbone_frozen = True

    class OnTheBackbone(Regularizer):
        name = "on_the_backbone"
        needs_trainable_backbone = True

    class Anywhere(Regularizer):
        name = "anywhere"

    assert not OnTheBackbone.applies_to(Frozen()) and OnTheBackbone.applies_to(_TrainAll())
    assert Anywhere.applies_to(Frozen()) and Anywhere.applies_to(_TrainAll())


def test_norm_parameters_are_each_norm_layers_own_scale_and_shift() -> None:
    """Bug caught: a norm layer's parameters taken recursively, so a norm subclass that holds a
    submodule (here a conditioning Linear inside a LayerNorm, itself holding a GroupNorm) adds
    that submodule's weights to the "norm" parameters, and a nested norm's twice."""
    from tlsearch.kinds.freezing import norm_parameters

    class ConditionedNorm(nn.LayerNorm):
        def __init__(self) -> None:
            super().__init__(4)
            self.scale = nn.Linear(4, 4)
            self.inner = nn.GroupNorm(2, 4)

    net = nn.Sequential(nn.Conv2d(3, 4, 1), ConditionedNorm())
    norm = net[1]
    expected = [norm.weight, norm.bias, norm.inner.weight, norm.inner.bias]
    assert [id(p) for p in norm_parameters(net)] == [id(p) for p in expected]
