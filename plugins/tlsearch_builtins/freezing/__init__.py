"""Built-in freezing strategies: which parameters train, at which learning rate, and the BatchNorm policy.

Static choices (:mod:`._static`): ``full_finetune``, ``linear_probe``, ``freeze_stages``,
``layer_decay``, ``bitfit``. Choices that change at epoch boundaries (:mod:`._scheduled`):
``gradual_unfreeze``, ``lp_ft``. Each documents what it does to BatchNorm running statistics.
The helpers they share (layer groups, norm layers, the BatchNorm policy) are public in
:mod:`tlsearch.kinds.freezing`, for third-party strategies too.
"""

from __future__ import annotations

from typing import Any

from tlsearch import hookimpl
from tlsearch.kinds.freezing import backbone_group_params, freeze_stats_where_frozen  # re-exported
from tlsearch_builtins.freezing._scheduled import LPFT, GradualUnfreeze
from tlsearch_builtins.freezing._static import BitFit, FreezeStages, FullFinetune, LayerDecay, LinearProbe

STRATEGIES = (FullFinetune, LinearProbe, FreezeStages, LayerDecay, BitFit, GradualUnfreeze, LPFT)


@hookimpl
def tlsearch_register_freezing_strategies(register: Any) -> None:
    for cls in STRATEGIES:
        register.add(cls)


__all__ = [
    "LPFT",
    "STRATEGIES",
    "BitFit",
    "FreezeStages",
    "FullFinetune",
    "GradualUnfreeze",
    "LayerDecay",
    "LinearProbe",
    "backbone_group_params",
    "freeze_stats_where_frozen",
]
