"""The freezing helpers are public in tlsearch.kinds.freezing (what a third-party strategy imports),
and the built-ins use those same functions."""

from __future__ import annotations

import tlsearch_builtins.freezing as builtin_freezing
from tlsearch_builtins.freezing import _policy, _scheduled, _static

from tlsearch.kinds import freezing
from tlsearch.testing import TinyBackbone, tiny_transfer_model


def test_the_builtins_use_the_public_helpers() -> None:
    for name in ("backbone_group_params", "freeze_stats_where_frozen", "set_trainable", "NORM_TYPES"):
        assert getattr(_policy, name) is getattr(freezing, name), name
    assert _scheduled.backbone_group_params is freezing.backbone_group_params
    assert _static.freeze_stats_where_frozen is freezing.freeze_stats_where_frozen
    assert builtin_freezing.backbone_group_params is freezing.backbone_group_params


def test_backbone_group_params_follow_the_layer_groups_then_the_head() -> None:
    model = tiny_transfer_model(TinyBackbone())
    groups = freezing.backbone_group_params(model)
    assert [g.name for g in groups] == ["group0", "group1", "group2", "head"]
    assert [g.lr_scale for g in groups] == [1.0] * 4
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups[0].params} == {
        "backbone.stem.0.weight",
        "backbone.stem.0.bias",
        "backbone.stem.1.weight",
        "backbone.stem.1.bias",
    }
    assert [id(p) for p in groups[-1].params] == [id(p) for p in model.head.parameters()]


def test_norm_parameters_are_the_norm_layers_scales_and_shifts() -> None:
    model = tiny_transfer_model(TinyBackbone())
    assert len(freezing.norm_layers(model.backbone)) == 3
    names = {id(p): n for n, p in model.backbone.named_parameters()}
    assert sorted(names[id(p)] for p in freezing.norm_parameters(model.backbone)) == sorted(
        f"{g}.1.{w}" for g in ("stem", "stage1", "stage2") for w in ("weight", "bias")
    )


def test_freeze_stats_where_frozen_puts_unfrozen_layers_back_in_train_mode() -> None:
    model = tiny_transfer_model(TinyBackbone())
    model.train()
    freezing.set_trainable(model.backbone.stem.parameters(), False)
    freezing.freeze_stats_where_frozen(model)
    assert not model.backbone.stem[1].training and model.backbone.stage1[1].training
    freezing.set_trainable(model.backbone.stem.parameters(), True)  # unfrozen the next epoch
    freezing.freeze_stats_where_frozen(model)
    assert model.backbone.stem[1].training
    model.eval()
    freezing.freeze_stats_where_frozen(model)
    assert not model.backbone.stage1[1].training  # follows model.training
