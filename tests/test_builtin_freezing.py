"""The built-in freezing strategies in the real trainer: the contract checks (frozen parameters
bit-identical, trained ones moved, BatchNorm modes and statistics as the policy says), plus each
strategy's own schedule."""

from __future__ import annotations

import pytest
from tlsearch_builtins.backbones import TimmBackbone
from tlsearch_builtins.freezing import (
    LPFT,
    STRATEGIES,
    BitFit,
    FreezeStages,
    FullFinetune,
    GradualUnfreeze,
    LayerDecay,
    LinearProbe,
)
from tlsearch_builtins.freezing._static import REFERENCE_DEPTH

from tlsearch.registry import get_plugin_manager
from tlsearch.testing import (
    FreezingStrategyContract,
    TinyBackbone,
    synthetic_images,
    tiny_transfer_model,
    train_and_record,
)

GROUPS = ("stem", "stage1", "stage2")  # TinyBackbone's layer groups


def _train(strategy, epochs=3):
    model = tiny_transfer_model(TinyBackbone())
    images, labels = synthetic_images(32, size=16)
    return model, train_and_record(model, strategy, images=images, targets=labels, epochs=epochs)


def _trained_groups(record) -> list[str]:
    return [g for g in GROUPS if any(n.startswith(f"backbone.{g}.") for n in record.trainable)]


class TestFullFinetune(FreezingStrategyContract):
    plugin = FullFinetune


class TestLinearProbe(FreezingStrategyContract):
    plugin = LinearProbe


class TestFreezeStages(FreezingStrategyContract):
    plugin = FreezeStages
    params = {"fraction": 0.5}


class TestFreezeStagesN(FreezingStrategyContract):
    plugin = FreezeStages
    params = {"n_frozen": 2}


class TestLayerDecay(FreezingStrategyContract):
    plugin = LayerDecay


class TestBitFit(FreezingStrategyContract):
    plugin = BitFit

    def batchnorm_should_train(self, strategy, *, module_name, params, trainable):
        return False  # BitFit's documented policy: BatchNorm biases train, the statistics stay frozen


class TestBitFitWithNorms(FreezingStrategyContract):
    plugin = BitFit
    params = {"train_norms": True}


class TestGradualUnfreeze(FreezingStrategyContract):
    plugin = GradualUnfreeze
    epochs = 4


class TestLPFT(FreezingStrategyContract):
    plugin = LPFT
    params = {"probe_epochs": 1}


class TestGradualUnfreezeOnATimmModel(FreezingStrategyContract):
    """The same checks on a real timm architecture (timm's tiny test ResNet, random weights)."""

    plugin = GradualUnfreeze
    epochs = 3

    def make_model(self):
        return tiny_transfer_model(TimmBackbone(model="test_resnet", weights="random"))


def test_linear_probe_freezes_every_batchnorm_and_trains_only_the_head() -> None:
    _, records = _train(LinearProbe())
    for r in records:
        assert r.trainable == {"head.weight", "head.bias"}
        assert not any(r.bn_training.values())


@pytest.mark.parametrize(
    ("params", "frozen"),
    [({"fraction": 0.5}, 1), ({"fraction": 0.7}, 2), ({"n_frozen": 2}, 2), ({"fraction": 0.0}, 0)],
)
def test_freeze_stages_freezes_the_first_groups(params, frozen) -> None:
    _, records = _train(FreezeStages(**params), epochs=1)
    assert _trained_groups(records[0]) == list(GROUPS[frozen:])
    bn = records[0].bn_training
    assert [bn[f"backbone.{g}.1"] for g in GROUPS] == [i >= frozen for i in range(3)]


def test_freeze_stages_with_everything_frozen_is_a_probe() -> None:
    assert FreezeStages(fraction=1.0).backbone_frozen
    strategy = FreezeStages(n_frozen=5)
    _, records = _train(strategy, epochs=1)
    assert strategy.backbone_frozen and _trained_groups(records[0]) == []


def test_layer_decay_learning_rates_are_geometric_in_the_fraction_of_depth() -> None:
    model = tiny_transfer_model(TinyBackbone())
    groups = LayerDecay(decay=0.5).setup(model)
    assert [g.name for g in groups] == ["group0", "group1", "group2", "head"]
    k = REFERENCE_DEPTH
    assert [g.lr_scale for g in groups] == pytest.approx([0.5**k, 0.5 ** (k * 2 / 3), 0.5 ** (k / 3), 1.0])
    assert all(p.requires_grad for p in model.parameters())


def test_layer_decay_lr_is_what_the_optimizer_uses() -> None:
    _, records = _train(LayerDecay(decay=0.8), epochs=1)
    k = REFERENCE_DEPTH
    assert records[0].lr_scales == pytest.approx(
        {"group0": 0.8**k, "group1": 0.8 ** (k * 2 / 3), "group2": 0.8 ** (k / 3), "head": 1.0}
    )


def test_gradual_unfreeze_unfreezes_one_group_every_k_epochs_top_down() -> None:
    _, records = _train(GradualUnfreeze(every=2), epochs=7)
    assert [_trained_groups(r) for r in records] == [
        [],
        [],
        ["stage2"],
        ["stage2"],
        ["stage1", "stage2"],
        ["stage1", "stage2"],
        list(GROUPS),
    ]
    for r in records:  # BatchNorm statistics frozen exactly in the frozen groups
        assert [r.bn_training[f"backbone.{g}.1"] for g in GROUPS] == [g in _trained_groups(r) for g in GROUPS]


def test_lp_ft_switches_to_fine_tuning_at_the_right_epoch_with_a_lower_lr() -> None:
    _, records = _train(LPFT(probe_epochs=2, ft_lr_scale=0.1), epochs=4)
    assert [bool(_trained_groups(r)) for r in records] == [False, False, True, True]
    assert [r.lr_scales["head"] for r in records] == [1.0, 1.0, 0.1, 0.1]
    assert [r.lr_scales["backbone"] for r in records][2:] == [0.1, 0.1]
    assert [any(r.bn_training.values()) for r in records] == [False, False, True, True]


def test_bitfit_trains_biases_only_and_keeps_batchnorm_statistics() -> None:
    model, records = _train(BitFit(), epochs=1)
    backbone = {n for n in records[0].trainable if n.startswith("backbone.")}
    assert backbone and all(n.endswith(".bias") for n in backbone)
    assert not any(records[0].bn_training.values())
    _, records = _train(BitFit(train_norms=True), epochs=1)
    assert (
        "backbone.stem.1.weight" in records[0].trainable
        and "backbone.stem.0.weight" not in records[0].trainable
    )
    assert all(records[0].bn_training.values())


def test_strategies_reject_values_outside_their_range() -> None:
    with pytest.raises(ValueError, match="fraction"):
        FreezeStages(fraction=1.5)
    with pytest.raises(ValueError, match="decay"):
        LayerDecay(decay=0.0)
    with pytest.raises(ValueError, match="every"):
        GradualUnfreeze(every=0)


def test_every_builtin_strategy_is_registered_with_its_hyperparameters() -> None:
    strategies = get_plugin_manager().registry.plugins["freezing"]
    assert len(STRATEGIES) == 7
    for cls in STRATEGIES:
        assert strategies[cls.name].cls is cls
        assert set(strategies[cls.name].to_dict()["hyperparameters"]) == set(cls.hyperparameters)
        assert "BatchNorm" in (cls.__doc__ or ""), f"{cls.name} must document its BatchNorm policy"
