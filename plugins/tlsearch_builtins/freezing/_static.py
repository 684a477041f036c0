"""Freezing strategies whose choice of trainable parameters does not change during training."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tlsearch.kinds import FreezingStrategy, ParamGroup, PortfolioEntry, TransferModel
from tlsearch.kinds.freezing import (
    NORM_TYPES,
    backbone_group_params,
    freeze_stats_where_frozen,
    set_trainable,
)
from tlsearch.space import Categorical, Fixed, Float

#: a warm-start fine-tune's own training (PortfolioEntry.training): enough epochs for the cosine to
#: converge (the study's ``search.timeout`` re-plans them to end at the budget), warm-up, EMA on.
#: Measured on the real-data benchmark's digits (Lite0, 64 px): a full fine-tune at lr 2e-3 reached
#: 0.989 validation accuracy in 8 epochs, where the 3-epoch default stopped at 0.90. With a
#: timeout the epochs grow into half the time left after the first epoch (``budget_share``): on
#: digits-longtail at 300 s the 8-epoch fine-tune stopped at 0.61 test macro-F1 still rising 2-4
#: points an epoch, where a plain fine-tune trained for the whole 300 s (~40 epochs) reached 0.95.
FINETUNE_TRAINING = {"epochs": 8, "warmup": 0.1, "ema": 0.999, "budget_share": 0.5}


class FullFinetune(FreezingStrategy):
    """Every parameter trains; the backbone at ``backbone_lr_scale`` × the head's learning rate.

    BatchNorm: all layers train and update their running statistics.
    Source: the standard fine-tuning baseline (e.g. Kornblith et al., CVPR 2019).
    """

    name = "full_finetune"
    default = True
    #: the warm start's fine-tune (slot "finetune", before layer_decay's): the recipe that closed
    #: most of the digits gap on the real-data benchmark, AdamW at 2e-3 with 10% warm-up and a
    #: cosine decay over at least 8 epochs, the weights' EMA evaluated beside them
    portfolio = (
        PortfolioEntry(
            name="finetune_full_finetune",
            lr=2e-3,
            priority=10,
            slot="finetune",
            training=FINETUNE_TRAINING,
        ),
    )
    hyperparameters = {
        "backbone_lr_scale": Float(0.1, 1.0, log=True, default=1.0, help="backbone lr / head lr"),
    }
    backbone_lr_scale: float

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        set_trainable(model.parameters(), True)
        return [
            ParamGroup("backbone", list(model.backbone.parameters()), self.backbone_lr_scale),
            ParamGroup("head", model.head_parameters(), 1.0),
        ]


class LinearProbe(FreezingStrategy):
    """The backbone is frozen (weights and BatchNorm statistics); only the head trains.

    BatchNorm: the whole backbone runs in eval mode, so its running statistics never change and its
    features are deterministic (the trainer computes them once: the feature cache).
    With a ``linear`` head on cached features (classification), the head is solved to convergence
    by L-BFGS with L2 strength ``l2`` (:mod:`tlsearch.train.probe`) rather than trained by epochs.
    Source: the linear-evaluation protocol (e.g. Kornblith et al., *Do Better ImageNet Models
    Transfer Better?*, CVPR 2019).
    """

    name = "linear_probe"
    backbone_frozen = True
    default = True
    #: the solved probe first (what won the real-data benchmark), then two stronger L2 strengths
    #: when the budget has room (a solved probe's lr does not matter; its L2 strength does)
    portfolio = (
        PortfolioEntry(name="linear_probe", lr=1e-2, cost="cheap", priority=0),
        PortfolioEntry(
            name="linear_probe_l2_strong", params={"l2": 1e-2}, lr=1e-2, cost="cheap", priority=80
        ),
        PortfolioEntry(
            name="linear_probe_l2_medium", params={"l2": 1e-3}, lr=1e-2, cost="cheap", priority=81
        ),
    )
    hyperparameters = {
        "l2": Float(
            1e-6, 1e-1, log=True, default=1e-4, help="L2 strength of a solved linear head (cached features)"
        ),
    }
    l2: float

    @property
    def probe_l2(self) -> float | None:
        """A linear classification head on cached features is solved with L2 strength ``l2``."""
        return self.l2

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        set_trainable(model.backbone.parameters(), False)
        set_trainable(model.head.parameters(), True)
        return [ParamGroup("head", model.head_parameters(), 1.0)]

    def set_train_mode(self, model: TransferModel) -> None:
        model.backbone.eval()


class FreezeStages(FreezingStrategy):
    """Freeze the first layer groups (stem side) of the backbone; the rest and the head train.

    How many: ``n_frozen`` groups when the study sets it (Azure AutoML's "freeze the first N
    layers"), else ``floor(fraction × number of groups)`` (Quick-Tune's ``pct_to_freeze``; Arango
    et al., *Quick-Tune*, ICLR 2024). ``n_frozen`` larger than the number of groups freezes all.
    BatchNorm: layers in frozen groups run in eval mode (pretraining statistics kept); layers in
    trained groups update their statistics. Freezing every group makes it a linear probe.
    A study that sets or searches ``n_frozen`` (``n_frozen: [1, 2, 3]``) has ``fraction`` fixed
    for it (see :meth:`expand_overrides`): the search never samples a value that is then ignored.
    """

    name = "freeze_stages"
    hyperparameters = {
        "fraction": Float(0.0, 1.0, default=0.5, help="share of layer groups to freeze, from the stem"),
        "n_frozen": Fixed(None, help="freeze exactly this many groups instead (an int, or a list to search)"),
    }
    fraction: float
    n_frozen: int | None

    @classmethod
    def expand_overrides(cls, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """With ``n_frozen`` given, ``fraction`` is not searched (fixed at its default, unused)."""
        out = dict(overrides)
        if out.get("n_frozen") is not None:
            out.setdefault("fraction", cls.hyperparameters["fraction"].default)
        return out

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"freeze_stages: fraction must be in [0, 1] but got {self.fraction}")
        if self.n_frozen is not None and (not isinstance(self.n_frozen, int) or self.n_frozen < 0):
            raise ValueError(f"freeze_stages: n_frozen must be an integer >= 0 but got {self.n_frozen!r}")
        if self.n_frozen is None and self.fraction >= 1.0:
            self.backbone_frozen = True  # type: ignore[misc]  # instance-level: known once the fraction is

    def frozen_count(self, n_groups: int) -> int:
        if self.n_frozen is not None:
            return min(self.n_frozen, n_groups)
        return int(self.fraction * n_groups)

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        groups = backbone_group_params(model)
        n = self.frozen_count(len(groups) - 1)
        if n >= len(groups) - 1:
            self.backbone_frozen = True  # type: ignore[misc]
        for i, group in enumerate(groups):
            set_trainable(group.params, i >= n)
        return groups

    def set_train_mode(self, model: TransferModel) -> None:
        freeze_stats_where_frozen(model)


REFERENCE_DEPTH = 12  # layer_decay's reference depth: the 12 blocks of ViT-B (BEiT, MAE, ELECTRA-base)


class LayerDecay(FreezingStrategy):
    """Layer-wise learning-rate decay by fraction of depth: everything trains, layers near the input least.

    Backbone group ``i`` of ``G`` (stem ``i = 0``) sits at depth fraction ``f = (G - i) / G`` from
    the output (the head at 0, the stem at 1) and trains at ``lr · decay ** (K · f)`` with the
    reference depth ``K = 12``. So ``decay`` means what it means in the literature for a 12-block
    ViT-B (BEiT and MAE use 0.65–0.75) on every backbone: the stem's multiplier is ``decay ** 12``
    (0.032 at 0.75) whether timm splits the model into 5 groups (ResNet-50) or 13 (ViT-S). With a
    per-group rule (``decay ** (G - i)``) the same ``decay`` gave a stem multiplier of 0.24 on
    ResNet-50 and 0.024 on ViT-S, so a searched value meant something different on each backbone.
    Source: Clark et al., ELECTRA, ICLR 2020; Bao et al., BEiT, ICLR 2022; searched by Quick-Tune.
    BatchNorm: all layers train and update their running statistics.
    """

    name = "layer_decay"
    default = True
    #: the warm start's fine-tune where the study has no full_finetune (same slot): BEiT's recipe
    portfolio = (
        PortfolioEntry(
            name="finetune_layer_decay",
            params={"decay": 0.75},
            lr=1e-3,
            priority=11,
            slot="finetune",
            training=FINETUNE_TRAINING,
        ),
    )
    hyperparameters = {
        "decay": Float(
            0.5,
            0.95,
            default=0.75,
            help=f"lr multiplier per layer of a {REFERENCE_DEPTH}-block reference depth",
        )
    }
    decay: float

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"layer_decay: decay must be in (0, 1] but got {self.decay}")

    def multiplier(self, index: int, n_groups: int) -> float:
        """The lr multiplier of backbone group ``index`` (0 = stem) of ``n_groups``."""
        return float(self.decay ** (REFERENCE_DEPTH * (n_groups - index) / n_groups))

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        set_trainable(model.parameters(), True)
        groups = backbone_group_params(model)
        backbone = groups[:-1]
        for i, group in enumerate(backbone):
            group.lr_scale = self.multiplier(i, len(backbone))
        return groups


class BitFit(FreezingStrategy):
    """BitFit: only the bias terms of the backbone train (and the head); optionally the norm layers too.

    "Bias terms" are all backbone parameters named ``bias``, the shifts of normalisation layers
    included (as in the paper). With ``train_norms`` the scales of normalisation layers train as well.
    Source: Ben Zaken et al., *BitFit*, ACL 2022; AutoGluon's ``bit_fit`` option.
    BatchNorm: running statistics stay frozen (eval mode) unless ``train_norms``, in which case
    BatchNorm layers train normally: a bias-only update should not also move the statistics.
    """

    name = "bitfit"
    hyperparameters = {
        "train_norms": Categorical((False, True), default=False, help="also train norm scales")
    }
    train_norms: bool

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        set_trainable(model.parameters(), False)
        norm_params = set()
        if self.train_norms:
            norm_params = {
                id(p) for m in model.backbone.modules() if isinstance(m, NORM_TYPES) for p in m.parameters()
            }
        selected = [
            p
            for n, p in model.backbone.named_parameters()
            if n.rsplit(".", 1)[-1] == "bias" or id(p) in norm_params
        ]
        set_trainable(selected, True)
        set_trainable(model.head.parameters(), True)
        return [ParamGroup("backbone", selected, 1.0), ParamGroup("head", model.head_parameters(), 1.0)]

    def set_train_mode(self, model: TransferModel) -> None:
        if not self.train_norms:
            for module in model.backbone.modules():
                if isinstance(module, NORM_TYPES):
                    module.eval()
