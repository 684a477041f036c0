"""An example tlsearch plugin package: one plugin of each kind.

* backbone ``small_cnn`` (:mod:`.backbone`): a small CNN from random weights or a local file;
* head ``prototype`` (:mod:`.head`): a nearest-class-mean head initialised from the training data;
* freezing ``train_norms`` (here): train only the normalisation layers (and optionally the last
  layer groups) and the head, with the public helpers of :mod:`tlsearch.kinds.freezing`;
* regularizer ``confidence_penalty`` (:mod:`.regularizer`): an entropy penalty on the predictions.

Each is a class deriving from one of the four kinds, with declared hyperparameters; the
``tlsearch_register_*`` hook implementations at the bottom add them. The entry point in
``pyproject.toml`` points tlsearch at this module.
"""

from __future__ import annotations

from typing import Any

from tlsearch import hookimpl
from tlsearch.kinds import FreezingStrategy, ParamGroup, TransferModel
from tlsearch.kinds.freezing import (
    backbone_group_params,
    freeze_stats_where_frozen,
    norm_parameters,
    set_trainable,
)
from tlsearch.space import Float, Int
from tlsearch_example_plugin.backbone import SmallCNNBackbone
from tlsearch_example_plugin.head import PrototypeHead
from tlsearch_example_plugin.regularizer import ConfidencePenalty

__version__ = "0.1.0"


class TrainNorms(FreezingStrategy):
    """Train only the backbone's normalisation layers (scales and shifts) and the head.

    A few thousand parameters adapt the whole network's feature statistics: surprisingly strong
    for its size. Source: Frankle, Schwab & Morcos, *Training BatchNorm and Only BatchNorm*,
    ICLR 2021. The norm layers usually want a larger learning rate than the head
    (``norm_lr_scale``). ``top_groups`` also trains the last layer groups (those next to the head)
    entirely, at the head's learning rate.

    BatchNorm: every BatchNorm layer trains, so it updates its running statistics too (that is
    part of the adaptation); all other layers are frozen.
    """

    name = "train_norms"
    hyperparameters = {
        "norm_lr_scale": Float(1.0, 10.0, log=True, default=3.0, help="norm layers' lr / head lr"),
        "top_groups": Int(0, 2, default=0, help="also train the last N backbone layer groups entirely"),
    }
    norm_lr_scale: float
    top_groups: int

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.norm_lr_scale <= 0:
            raise ValueError(f"train_norms: norm_lr_scale must be > 0 but got {self.norm_lr_scale}")
        if self.top_groups < 0:
            raise ValueError(f"train_norms: top_groups must be >= 0 but got {self.top_groups}")

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        *backbone, head = backbone_group_params(model)  # layer groups input → output, then the head
        top = [p for group in backbone[max(0, len(backbone) - self.top_groups) :] for p in group.params]
        top_ids = {id(p) for p in top}
        norms = [p for p in norm_parameters(model.backbone) if id(p) not in top_ids]
        set_trainable(model.backbone.parameters(), False)
        set_trainable([*norms, *top, *head.params], True)
        groups = [ParamGroup("norms", norms, self.norm_lr_scale)]
        if top:
            groups.append(ParamGroup("top", top, 1.0))
        return [*groups, head]

    def set_train_mode(self, model: TransferModel) -> None:
        freeze_stats_where_frozen(model)  # here every BatchNorm layer trains: its scale and shift do


@hookimpl
def tlsearch_register_backbones(register: Any) -> None:
    register.add(SmallCNNBackbone)


@hookimpl
def tlsearch_register_heads(register: Any) -> None:
    register.add(PrototypeHead)


@hookimpl
def tlsearch_register_freezing_strategies(register: Any) -> None:
    register.add(TrainNorms)


@hookimpl
def tlsearch_register_regularizers(register: Any) -> None:
    register.add(ConfidencePenalty)
