"""An example tlsearch plugin package: the ``train_norms`` freezing strategy.

Everything a plugin needs is here: a class deriving from one of the four kinds, its declared
hyperparameters, and a ``tlsearch_register_*`` hook implementation that adds it. The entry point in
``pyproject.toml`` points tlsearch at this module.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tlsearch import hookimpl
from tlsearch.kinds import FreezingStrategy, ParamGroup, TransferModel
from tlsearch.space import Float

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)

__version__ = "0.1.0"


class TrainNorms(FreezingStrategy):
    """Train only the backbone's normalisation layers (scales and shifts) and the head.

    A few thousand parameters adapt the whole network's feature statistics: surprisingly strong
    for its size. Source: Frankle, Schwab & Morcos, *Training BatchNorm and Only BatchNorm*,
    ICLR 2021. The norm layers usually want a larger learning rate than the head
    (``norm_lr_scale``).

    BatchNorm: every BatchNorm layer trains, so it updates its running statistics too (that is
    part of the adaptation); all other layers are frozen.
    """

    name = "train_norms"
    hyperparameters = {
        "norm_lr_scale": Float(1.0, 10.0, log=True, default=3.0, help="norm layers' lr / head lr"),
    }
    norm_lr_scale: float

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.norm_lr_scale <= 0:
            raise ValueError(f"train_norms: norm_lr_scale must be > 0 but got {self.norm_lr_scale}")

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        norms = [
            p
            for m in model.backbone.modules()
            if isinstance(m, NORM_TYPES)
            for p in m.parameters(recurse=False)
        ]
        for p in [*norms, *model.head.parameters()]:
            p.requires_grad_(True)
        return [
            ParamGroup("norms", norms, self.norm_lr_scale),
            ParamGroup("head", list(model.head.parameters()), 1.0),
        ]


@hookimpl
def tlsearch_register_freezing_strategies(register: Any) -> None:
    register.add(TrainNorms)
