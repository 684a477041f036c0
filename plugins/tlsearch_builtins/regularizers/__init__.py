"""Built-in regularizers.

Options (:mod:`._options`): ``weight_decay``, ``label_smoothing``, ``drop_path``.
Batch transforms (:mod:`._mixing`): ``mixup``, ``cutmix``.
Loss terms (:mod:`._penalties`): ``l2_sp``, ``delta`` (DELTA with its channel attention), ``bss``.
Class imbalance (:mod:`._imbalance`): ``class_weights``, ``focal_loss``, ``logit_adjustment``,
``balanced_sampler``.
"""

from __future__ import annotations

from typing import Any

from tlsearch import hookimpl
from tlsearch_builtins.regularizers._imbalance import (
    BalancedSampler,
    ClassWeightedLoss,
    FocalLoss,
    LogitAdjustment,
)
from tlsearch_builtins.regularizers._mixing import CutMix, Mixup, soft_targets
from tlsearch_builtins.regularizers._options import DropPath, LabelSmoothing, WeightDecay
from tlsearch_builtins.regularizers._penalties import BSS, DELTA, L2SP, layer_group_modules

REGULARIZERS = (
    WeightDecay,
    LabelSmoothing,
    DropPath,
    Mixup,
    CutMix,
    L2SP,
    DELTA,
    BSS,
    ClassWeightedLoss,
    FocalLoss,
    LogitAdjustment,
    BalancedSampler,
)


@hookimpl
def tlsearch_register_regularizers(register: Any) -> None:
    for cls in REGULARIZERS:
        register.add(cls)


__all__ = [
    "BSS",
    "DELTA",
    "BalancedSampler",
    "ClassWeightedLoss",
    "FocalLoss",
    "LogitAdjustment",
    "L2SP",
    "REGULARIZERS",
    "CutMix",
    "DropPath",
    "LabelSmoothing",
    "Mixup",
    "WeightDecay",
    "layer_group_modules",
    "soft_targets",
]
