"""The real Trainer's wiring, pinned: what the optimizer's param groups carry (layer-wise lr
multipliers, the no-decay sets), the learning rate of each real step (warm-up, then the schedule),
gradient clipping, a penalty's gradient and mixed targets reaching the step, evaluation in eval mode
without grad, val_loss as the plain task loss, frozen parameters untouched, and BatchNorm modes
following a strategy that (un)freezes at an epoch start.

Each test names the one-line bug it catches. Everything runs on tiny models and 16 px images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models._manipulate import group_parameters
from tlsearch_builtins.freezing import FreezeStages, FullFinetune, LayerDecay
from tlsearch_builtins.freezing._static import REFERENCE_DEPTH
from tlsearch_builtins.regularizers import LabelSmoothing, WeightDecay
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tlsearch.data.augment import Normalizer
from tlsearch.kinds import BuiltBackbone, FreezingStrategy, ParamGroup, Regularizer, TransferModel
from tlsearch.preprocessing import DataConfig
from tlsearch.testing import (
    FreezingStrategyContract,
    TinyBackbone,
    decoded_images,
    synthetic_images,
    tiny_transfer_model,
    train_and_record,
)
from tlsearch.train import Trainer, TrainSettings

NUM_CLASSES = 3


def _data(n: int = 16, size: int = 16, seed: int = 0):
    images, labels = synthetic_images(n, size=size, num_classes=NUM_CLASSES, seed=seed)
    return images, labels


def _trainer(
    model: TransferModel, strategy: FreezingStrategy, regularizers=(), device: str = "cpu", **settings: Any
) -> Trainer:
    return Trainer(
        model,
        strategy=strategy,
        regularizers=list(regularizers),
        num_outputs=NUM_CLASSES,
        settings=TrainSettings(
            **{
                "epochs": 1,
                "batch_size": 8,
                "lr": 1e-2,
                "compile": "never",
                "feature_cache": False,
                "precision": "fp32",
                "augment": False,
                **settings,
            }
        ),
        device=device,
    )


def _fit(trainer: Trainer, n: int = 16, size: int = 16, **kwargs: Any):
    images, labels = _data(n, size)
    decoded = decoded_images(images, labels, trainer.model.data_config)
    return trainer.fit(decoded, decoded, **kwargs), decoded


@contextmanager
def _steps() -> Iterator[list[dict[str, Any]]]:
    """Each real optimizer step, seen just before it updates: every group's lr and name, and the
    global norm of the gradients it is about to apply."""
    seen: list[dict[str, Any]] = []

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for pg in optimizer.param_groups for p in pg["params"] if p.grad is not None]
        seen.append(
            {
                "lr": {pg.get("name", i): pg["lr"] for i, pg in enumerate(optimizer.param_groups)},
                "grad_norm": float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))),
            }
        )

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _tiny_vit(depth: int = 3, *, wrapped: bool = False) -> TransferModel:
    """A timm ViT small enough for a CPU test (random weights): 16 px, patch 8, width 32."""
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=8,
        depth=depth,
        embed_dim=32,
        num_heads=2,
        num_classes=0,
    )
    groups = list(group_parameters(vit, vit.group_matcher(coarse=False)).values())
    module: nn.Module = vit
    if wrapped:  # a plugin's wrapper around the timm model: names become backbone.model.*
        module = nn.Module()
        module.model = vit
        module.forward = vit.forward  # type: ignore[method-assign]
        groups = [[f"model.{n}" for n in g] for g in groups]
    built = BuiltBackbone(
        module=module,
        num_features=vit.num_features,
        data_config=DataConfig(input_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        layer_groups=groups,
    )
    return TransferModel(built, nn.Linear(vit.num_features, NUM_CLASSES))


# --- BatchNorm modes follow a strategy that changes what trains at an epoch start ----------------


class UnfreezeAfterFirstEpoch(FreezingStrategy):
    """A third-party-style strategy: head only in epoch 0, everything from epoch 1, switched in
    on_epoch_start, relying on the default BatchNorm policy (no set_train_mode of its own)."""

    name = "unfreeze_after_first_epoch"

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        self.on_epoch_start(model, 0, [])
        return [ParamGroup("all", list(model.parameters()))]

    def on_epoch_start(self, model: TransferModel, epoch: int, groups: list[ParamGroup]) -> None:
        for p in model.backbone.parameters():
            p.requires_grad_(epoch >= 1)


class FreezeAfterFirstEpoch(UnfreezeAfterFirstEpoch):
    """The reverse: everything trains in epoch 0, the backbone is frozen from epoch 1."""

    name = "freeze_after_first_epoch"

    def on_epoch_start(self, model: TransferModel, epoch: int, groups: list[ParamGroup]) -> None:
        for p in model.backbone.parameters():
            p.requires_grad_(epoch == 0)


class TestUnfreezeAtEpochStart(FreezingStrategyContract):
    """Bug caught: set_train_mode called before on_epoch_start (BatchNorm an epoch behind)."""

    plugin = UnfreezeAfterFirstEpoch


class TestFreezeAtEpochStart(FreezingStrategyContract):
    plugin = FreezeAfterFirstEpoch


def test_batchnorm_modes_and_statistics_follow_the_epochs_own_freezing() -> None:
    images, labels = _data()
    model = tiny_transfer_model(TinyBackbone())
    records = train_and_record(model, UnfreezeAfterFirstEpoch(), images=images, targets=labels, epochs=2)
    stat = "buffer:backbone.stem.1.running_mean"
    assert [any(r.bn_training.values()) for r in records] == [False, True]
    assert [torch.equal(r.before[stat], r.after[stat]) for r in records] == [True, False]
    model = tiny_transfer_model(TinyBackbone())
    records = train_and_record(model, FreezeAfterFirstEpoch(), images=images, targets=labels, epochs=2)
    assert [any(r.bn_training.values()) for r in records] == [True, False]
    assert [torch.equal(r.before[stat], r.after[stat]) for r in records] == [False, True]


# --- the optimizer's real param groups ---------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True], ids=["timm-model", "wrapped-timm-model"])
def test_position_embedding_and_class_token_take_no_weight_decay(wrapped: bool) -> None:
    """Bug caught: the no-decay set built from ``ndim < 2`` only (or names not prefixed right)."""
    model = _tiny_vit(wrapped=wrapped)
    trainer = _trainer(model, FullFinetune(), [WeightDecay(strength=0.05)])
    decay_of: dict[int, float] = {}

    def read_groups(epoch: int) -> None:
        assert trainer.optimizer is not None
        decay_of.update(
            {id(p): pg["weight_decay"] for pg in trainer.optimizer.param_groups for p in pg["params"]}
        )

    _fit(trainer, on_epoch_start=read_groups)
    named = dict(model.named_parameters())
    prefix = "backbone.model." if wrapped else "backbone."
    for name in ("pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"):
        assert decay_of[id(named[prefix + name])] == 0.0, name
    for name in ("blocks.0.attn.qkv.weight", "patch_embed.proj.weight"):
        assert decay_of[id(named[prefix + name])] == 0.05, name
    assert decay_of[id(named["head.weight"])] == 0.05 and decay_of[id(named["head.bias"])] == 0.0


def test_layer_decay_gives_the_stem_the_same_lr_on_backbones_with_different_group_counts() -> None:
    """Bug caught: a per-group rule (``decay ** (G - i)``), or the multipliers not reaching the steps."""
    stem_ratio = {}
    for label, model in (("cnn", tiny_transfer_model(TinyBackbone())), ("vit", _tiny_vit(depth=3))):
        with _steps() as steps:
            _fit(_trainer(model, LayerDecay(decay=0.75), scheduler="constant", warmup=0.0))
        lr = steps[0]["lr"]
        stem_ratio[label] = (lr["group0"] / lr["head"], len(model.layer_group_names))
    (cnn, cnn_groups), (vit, vit_groups) = stem_ratio["cnn"], stem_ratio["vit"]
    assert cnn_groups != vit_groups
    assert cnn == pytest.approx(0.75**REFERENCE_DEPTH) and vit == pytest.approx(0.75**REFERENCE_DEPTH)


# --- the learning rate of each step, and clipping -----------------------------------------------


def test_warmup_ramps_linearly_then_the_schedule_runs() -> None:
    """Bugs caught: no warm-up; the warm-up not linear; the schedule not advancing after it."""
    for scheduler in ("constant", "cosine"):
        with _steps() as steps:
            _fit(
                _trainer(
                    tiny_transfer_model(TinyBackbone()),
                    FullFinetune(),
                    epochs=2,
                    warmup=0.5,
                    scheduler=scheduler,
                ),
                n=32,
            )
        head = [s["lr"]["head"] / 1e-2 for s in steps]
        assert len(head) == 8  # 2 epochs × 32 images / batch 8; warm-up = round(0.5 × 8) = 4 steps
        assert head[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
        if scheduler == "constant":
            assert head[5:] == pytest.approx([1.0, 1.0, 1.0])
        else:
            assert head[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])


def test_clip_grad_norm_bounds_the_gradient_the_step_applies() -> None:
    """Bug caught: clip_grad_norm ignored (or clipped after the step)."""
    norms = {}
    for clip in (None, 1e-3):
        with _steps() as steps:
            _fit(_trainer(tiny_transfer_model(TinyBackbone()), FullFinetune(), clip_grad_norm=clip))
        norms[clip] = [s["grad_norm"] for s in steps]
    assert min(norms[None]) > 1e-2
    assert max(norms[1e-3]) <= 1e-3 * (1 + 1e-4)


# --- what reaches the loss and the step --------------------------------------------------------


class PullHeadBias(Regularizer):
    """A penalty pulling every head bias towards +5 (cross-entropy cannot move their sum)."""

    name = "pull_head_bias"

    def penalty(self, model: nn.Module, *, images: Any, features: Any) -> torch.Tensor:
        return 10.0 * ((model.head.bias - 5.0) ** 2).sum()


def test_a_penalty_gradient_reaches_the_weights() -> None:
    """Bug caught: the penalty not added to the loss (or added detached). With SGD, cross-entropy's
    gradient on the head biases sums to 0, so only the penalty can move their mean."""
    moved = {}
    for regs in ((), (PullHeadBias(),)):
        model = tiny_transfer_model(TinyBackbone())
        start = float(model.head.bias.detach().mean())
        _fit(_trainer(model, FullFinetune(), regs, optimizer="sgd", lr=1e-3))
        moved[bool(regs)] = float(model.head.bias.detach().mean()) - start
    assert abs(moved[False]) < 1e-5
    assert moved[True] > 1e-2


class AllClassZero(Regularizer):
    """A batch transform whose (soft) targets say every image is class 0, as mixup's soft targets would."""

    name = "all_class_zero"

    def transform_batch(self, images: torch.Tensor, targets: torch.Tensor, *, num_outputs: int):
        soft = torch.zeros(len(targets), num_outputs, device=images.device)
        soft[:, 0] = 1.0
        return images, soft


def test_the_transformed_targets_reach_the_loss() -> None:
    """Bug caught: the loss computed on the original labels instead of the transform's targets."""
    model = tiny_transfer_model(TinyBackbone())
    result, _ = _fit(_trainer(model, FullFinetune(), [AllClassZero()], epochs=3, lr=3e-2))
    # balanced labels: predicting class 0 everywhere scores exactly 1/3 (6 of 16 here: 0,3,…,15)
    assert result.metrics["accuracy"] == pytest.approx(6 / 16)
    assert int(model.head.bias.argmax()) == 0


# --- evaluation --------------------------------------------------------------------------------


class RecordingHead(nn.Linear):
    """A linear head that records, for each call, the batch size, its mode and whether grad is on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((len(x), self.training, torch.is_grad_enabled()))
        return super().forward(x)


def test_evaluation_runs_in_eval_mode_without_grad() -> None:
    """Bugs caught: evaluation without ``model.eval()``, or with grad enabled."""
    head = RecordingHead(TinyBackbone().build().num_features, NUM_CLASSES)
    model = tiny_transfer_model(TinyBackbone(), head=head)
    _fit(_trainer(model, FullFinetune(), eval_batch_size=16))
    train_calls = [c for c in head.calls if c[0] == 8]
    eval_calls = [c for c in head.calls if c[0] == 16]
    assert train_calls and all(training and grad for _, training, grad in train_calls)
    assert eval_calls and not any(training or grad for _, training, grad in eval_calls)


def test_val_loss_is_the_plain_task_loss_with_label_smoothing_on() -> None:
    """Bug caught: val_loss computed with the training loss options (label smoothing)."""
    model = tiny_transfer_model(TinyBackbone())
    result, decoded = _fit(_trainer(model, FullFinetune(), [LabelSmoothing(epsilon=0.3)]))
    images = torch.from_numpy(decoded.images).permute(0, 3, 1, 2)
    targets = torch.from_numpy(decoded.targets)
    model.eval()
    with torch.no_grad():
        outputs = model(Normalizer(model.data_config, device="cpu")(images))
    plain = float(F.cross_entropy(outputs, targets))
    smoothed = float(F.cross_entropy(outputs, targets, label_smoothing=0.3))
    assert result.metrics["val_loss"] == pytest.approx(plain, rel=1e-5)
    assert abs(plain - smoothed) > 1e-3


# --- frozen parameters --------------------------------------------------------------------------


def test_frozen_groups_stay_bit_identical_under_weight_decay() -> None:
    """Bug caught: frozen parameters updated (decoupled weight decay, a stray grad, BN statistics)."""
    model = tiny_transfer_model(TinyBackbone())
    before = {n: t.clone() for n, t in model.state_dict().items()}
    _fit(_trainer(model, FreezeStages(n_frozen=2), [WeightDecay(strength=0.1)], epochs=2, lr=0.1))
    after = model.state_dict()
    for name, value in before.items():
        frozen = name.startswith(("backbone.stem.", "backbone.stage1."))
        if name.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, after[name]) == frozen, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a grad scaler needs a GPU")
def test_clip_grad_norm_bounds_the_unscaled_gradient_under_fp16() -> None:
    """Bug caught: clipping the scaled gradients (before ``scaler.unscale_``), a no-op in practice."""
    trainer = _trainer(
        tiny_transfer_model(TinyBackbone()),
        FullFinetune(),
        device="cuda",
        clip_grad_norm=1e-3,
        precision="fp16",
    )
    with _steps() as steps:
        _fit(trainer)
    assert steps and max(s["grad_norm"] for s in steps) <= 1e-3 * (1 + 1e-3)


class CountsTeardown(Regularizer):
    """Counts its teardown calls (L2-SP drops its θ0 copy there, DELTA its feature hooks)."""

    name = "counts_teardown"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.teardowns = 0

    def teardown(self, model: TransferModel) -> None:
        self.teardowns += 1


def test_fit_tears_its_regularizers_down_and_reports_each_epochs_duration() -> None:
    """Bugs caught: a regularizer's teardown skipped (its hooks and θ0 copy outlive the trial); an
    epoch's ``train_seconds`` that is a clock reading instead of a duration."""
    import time

    reg = CountsTeardown()
    model = tiny_transfer_model(TinyBackbone())
    before = time.perf_counter()
    result, _ = _fit(_trainer(model, FullFinetune(), [reg], epochs=2))
    wall = time.perf_counter() - before
    assert reg.teardowns == 1
    epochs = result.extras["epochs"]
    assert len(epochs) == 2 and all(0 <= e["train_seconds"] <= wall for e in epochs)


def test_without_a_weight_decay_regularizer_no_parameter_is_decayed() -> None:
    """Bug caught: the Trainer's default weight decay (none asked for) set to anything but 0."""
    model = tiny_transfer_model(TinyBackbone())
    trainer = _trainer(model, FullFinetune(), [LabelSmoothing(epsilon=0.1)])
    decays: set[float] = set()

    def read_groups(epoch: int) -> None:
        assert trainer.optimizer is not None
        decays.update(pg["weight_decay"] for pg in trainer.optimizer.param_groups)

    _fit(trainer, on_epoch_start=read_groups)
    assert decays == {0.0}


def test_compile_always_runs_the_training_steps_through_the_compiled_backbone(monkeypatch) -> None:
    """Bug caught: ``compile: always`` (or a repaying ``auto``) recorded as compiled while the backbone
    is never compiled. ``torch.compile`` is replaced by a counting pass-through (a CPU test cannot
    afford inductor), so what is checked is that the backbone's calls go through what it returned."""
    compiled_calls: list[int] = []

    def counting_compile(fn, *args, **kwargs):
        def wrapper(*a, **kw):
            compiled_calls.append(1)
            return fn(*a, **kw)

        return wrapper

    monkeypatch.setattr(torch, "compile", counting_compile)
    model = tiny_transfer_model(TinyBackbone())
    result, _ = _fit(_trainer(model, FullFinetune(), compile="always"))
    assert result.extras["compile"] is True and result.extras["compile_reason"] == "compile: always"
    assert len(compiled_calls) >= 2  # 16 images at batch 8: two training steps, then evaluation
