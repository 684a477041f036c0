"""The built-in regularizers: the contract checks, plus the mathematics each one claims."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tlsearch_builtins.freezing import LinearProbe
from tlsearch_builtins.regularizers import (
    BSS,
    DELTA,
    L2SP,
    REGULARIZERS,
    CutMix,
    DropPath,
    LabelSmoothing,
    Mixup,
    WeightDecay,
    layer_group_modules,
)

from tlsearch.registry import get_plugin_manager
from tlsearch.testing import (
    RegularizerContract,
    TinyBackbone,
    TrainEverything,
    synthetic_images,
    tiny_transfer_model,
    train_and_record,
)


class TestWeightDecay(RegularizerContract):
    plugin = WeightDecay


class TestLabelSmoothing(RegularizerContract):
    plugin = LabelSmoothing


class TestDropPath(RegularizerContract):
    plugin = DropPath


class TestMixup(RegularizerContract):
    plugin = Mixup


class TestCutMix(RegularizerContract):
    plugin = CutMix


class TestL2SP(RegularizerContract):
    plugin = L2SP


class TestDELTA(RegularizerContract):
    plugin = DELTA


class TestDELTAPooled(RegularizerContract):
    plugin = DELTA
    params = {"layers": "pooled"}


class TestBSS(RegularizerContract):
    plugin = BSS


def _images(n: int = 8) -> torch.Tensor:
    return synthetic_images(n, size=16)[0]


# --- L2-SP ----------------------------------------------------------------------------------------


def test_l2sp_is_zero_at_the_start_and_its_gradient_points_back_to_theta0() -> None:
    model = tiny_transfer_model()
    for p in model.head.parameters():
        p.requires_grad_(False)  # isolate the α term
    reg = L2SP(alpha=0.1, beta=0.01)
    reg.setup(model, num_outputs=3, task="classification")
    features = model.forward_features(_images())
    assert float(reg.penalty(model, images=None, features=features)) == 0.0
    theta0 = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    term = reg.penalty(model, images=None, features=features)
    term.backward()
    for n, p in model.backbone.named_parameters():
        assert torch.allclose(p.grad, 0.1 * (p.detach() - theta0[n]), atol=1e-6), n  # −grad ∝ θ0 − θ
    expected = 0.05 * sum(
        float((p.detach() - theta0[n]).pow(2).sum()) for n, p in model.backbone.named_parameters()
    )
    assert float(term) == pytest.approx(expected, rel=1e-5)


def test_l2sp_puts_plain_l2_on_the_head_weights_and_skips_frozen_parameters() -> None:
    model = tiny_transfer_model()
    reg = L2SP(alpha=0.1, beta=0.01)
    reg.setup(model, num_outputs=3, task="classification")
    LinearProbe().setup(model)  # backbone frozen → only the head's weight matrix counts
    term = reg.penalty(model, images=None, features=torch.zeros(2, 32))
    assert float(term) == pytest.approx(0.005 * float(model.head.weight.pow(2).sum()), rel=1e-5)


# --- DELTA ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", ["groups", "pooled"])
def test_delta_is_zero_for_an_unchanged_model_and_positive_once_it_changed(layers: str) -> None:
    model = tiny_transfer_model()
    model.train()  # BatchNorm with batch statistics: the reference must follow
    reg = DELTA(strength=0.1, layers=layers)
    reg.setup(model, num_outputs=3, task="classification")
    x = _images()
    assert float(reg.penalty(model, images=x, features=model.forward_features(x))) == 0.0
    with torch.no_grad():
        model.backbone.stage1[0].weight.mul_(1.5)
    term = reg.penalty(model, images=x, features=model.forward_features(x))
    assert float(term) > 0 and term.requires_grad
    reg.teardown(model)


def test_delta_compares_each_layer_group_output() -> None:
    model = tiny_transfer_model()
    assert layer_group_modules(model) == ["stem", "stage1", "stage2"]
    model.eval()
    reg = DELTA(strength=1.0, layers="groups")
    reg.setup(model, num_outputs=3, task="classification")
    x = _images()
    with torch.no_grad():
        stem0 = model.backbone.stem(x)
        model.backbone.stage2[0].bias.add_(1.0)  # changes stage2's map and the pooled features only
    features = model.forward_features(x)
    term = float(reg.penalty(model, images=x, features=features))
    with torch.no_grad():
        s1 = model.backbone.stage1(stem0)
        ref2 = reg._reference.stage2(s1)
        live2 = model.backbone.stage2(s1)
        expected = (live2 - ref2).pow(2).mean() + (features - reg._reference(x)).pow(2).mean()
    assert term == pytest.approx(float(expected), rel=1e-5)
    reg.teardown(model)


# --- BSS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_bss_matches_a_direct_svd(k: int) -> None:
    features = torch.randn(16, 10)
    term = BSS(strength=0.01, k=k).penalty(tiny_transfer_model(), images=None, features=features)
    singular = np.linalg.svd(features.numpy(), compute_uv=False)
    assert float(term) == pytest.approx(0.01 * float(np.sum(np.sort(singular)[:k] ** 2)), rel=1e-4)


def test_bss_gradient_shrinks_the_smallest_singular_value() -> None:
    features = torch.randn(16, 10, requires_grad=True)
    BSS(strength=1.0, k=1).penalty(tiny_transfer_model(), images=None, features=features).backward()
    with torch.no_grad():
        smaller = torch.linalg.svdvals(features - 0.01 * features.grad)[-1]
        assert smaller < torch.linalg.svdvals(features)[-1]


# --- mixup and cutmix -----------------------------------------------------------------------------


def _partners(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From soft targets of a batch whose labels are 0…N-1: λ per row and each row's partner."""
    lam = targets.diagonal()
    off = targets - torch.diag(lam)
    return lam, off.argmax(1)


def test_mixup_images_and_targets_are_the_same_convex_combination() -> None:
    torch.manual_seed(3)
    x, labels = _images(8), torch.arange(8)
    mixed, targets = Mixup(alpha=0.4, prob=1.0).transform_batch(x, labels, num_outputs=8)
    assert targets.shape == (8, 8) and torch.allclose(targets.sum(1), torch.ones(8))
    lam, partner = _partners(targets)
    assert torch.allclose(lam, lam[0].expand(8))  # one λ per batch
    lam_value = float(lam[0])
    for i in range(8):
        j = int(partner[i]) if lam_value < 1 else i
        assert torch.allclose(mixed[i], lam_value * x[i] + (1 - lam_value) * x[j], atol=1e-5)


def test_mixup_mixes_regression_targets_like_the_images() -> None:
    torch.manual_seed(0)
    values = torch.arange(6, dtype=torch.float32)
    x = values.view(6, 1, 1, 1).expand(6, 3, 4, 4).clone()  # image i is the constant i
    mixed, targets = Mixup(alpha=1.0).transform_batch(x, values, num_outputs=1)
    assert targets.shape == (6,)
    assert torch.allclose(mixed[:, 0, 0, 0], targets, atol=1e-5)
    assert not torch.equal(targets, values)


def test_cutmix_pastes_a_box_and_mixes_targets_by_its_exact_area() -> None:
    for seed in range(5):
        torch.manual_seed(seed)
        x, labels = _images(8), torch.arange(8)
        mixed, targets = CutMix(alpha=1.0).transform_batch(x, labels, num_outputs=8)
        lam, partner = _partners(targets)
        for i in range(8):
            own = (mixed[i] == x[i]).all(0)
            if float(lam[i]) == 1.0:
                assert own.all()
                continue
            j = int(partner[i])
            pasted = (mixed[i] == x[j]).all(0) & ~own
            assert (own | pasted).all(), "every pixel comes from the image or its partner"
            assert float(pasted.float().mean()) == pytest.approx(1 - float(lam[i]), abs=1e-6)
            rows, cols = pasted.nonzero(as_tuple=True)
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert int(box) == int(pasted.sum()), "the pasted region is one rectangle"


def test_mixing_leaves_a_batch_alone_with_probability_one_minus_prob() -> None:
    x, labels = _images(8), torch.arange(8)
    for cls in (Mixup, CutMix):
        out, targets = cls(prob=0.0).transform_batch(x, labels, num_outputs=8)
        assert out is x and targets is labels


# --- options and registration -------------------------------------------------------------------


def test_option_regularizers_say_what_they_set() -> None:
    assert WeightDecay(strength=0.05).optimizer_options() == {"weight_decay": 0.05}
    assert LabelSmoothing(epsilon=0.2).loss_options() == {"label_smoothing": 0.2}
    assert DropPath(rate=0.2).backbone_options() == {"drop_path_rate": 0.2}


def test_several_regularizers_train_together() -> None:
    model = tiny_transfer_model(TinyBackbone())
    images, labels = synthetic_images(16, size=16)
    regs = [WeightDecay(), LabelSmoothing(), Mixup(), CutMix(), L2SP(), DELTA(), BSS()]
    records = train_and_record(
        model, TrainEverything(), regularizers=regs, images=images, targets=labels, epochs=2
    )
    assert all(np.isfinite(r.losses).all() for r in records)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_strengths_use_the_literature_ranges() -> None:
    for cls, name in ((L2SP, "alpha"), (DELTA, "strength"), (BSS, "strength")):
        hp = cls.hyperparameters[name]
        assert (hp.low, hp.high, hp.log) == (1e-4, 1e-1, True)


def test_every_builtin_regularizer_is_registered_with_its_hyperparameters() -> None:
    registered = get_plugin_manager().registry.plugins["regularizer"]
    assert len(REGULARIZERS) == 12  # 8, and the 4 class-imbalance tools (tests/test_imbalance.py)
    for cls in REGULARIZERS:
        assert registered[cls.name].cls is cls
        assert set(registered[cls.name].to_dict()["hyperparameters"]) == set(cls.hyperparameters)
        assert cls.summary()
