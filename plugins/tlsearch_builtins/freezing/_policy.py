"""Shared helpers of the freezing strategies: requires_grad by layer group, and BatchNorm modes."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from tlsearch.kinds import ParamGroup, TransferModel

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def set_trainable(params: Iterable[nn.Parameter], trainable: bool) -> None:
    for p in params:
        p.requires_grad_(trainable)


def backbone_group_params(model: TransferModel) -> list[ParamGroup]:
    """One :class:`ParamGroup` per backbone layer group (``group0`` = stem), then ``head``."""
    groups = [ParamGroup(f"group{i}", list(params), 1.0) for i, params in enumerate(model.backbone_groups())]
    return [*groups, ParamGroup("head", model.head_parameters(), 1.0)]


def freeze_stats_where_frozen(model: TransferModel) -> None:
    """BatchNorm policy: a BatchNorm layer with all its parameters frozen runs in eval mode (running
    statistics of pretraining kept); one with a trainable parameter follows ``model.training``.

    Unlike the base class's default, this also puts a layer back in training mode, so a strategy
    can call it again after it unfroze parameters in ``on_epoch_start``.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            trainable = any(p.requires_grad for p in params) if params else False
            module.train(model.training and trainable)


def norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, NORM_TYPES)]
