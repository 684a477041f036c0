"""Freezing strategies: which parameters train, and at which learning rate.

Besides the :class:`FreezingStrategy` contract, the helpers every strategy needs, public so a
third-party strategy uses what the built-ins use (they import them from here):

* :func:`set_trainable` — ``requires_grad`` on a set of parameters;
* :func:`backbone_group_params` — one :class:`ParamGroup` per backbone layer group, then the head;
* :func:`norm_layers` / :func:`norm_parameters` — the normalisation layers (:data:`NORM_TYPES`)
  and their scales and shifts;
* :func:`freeze_stats_where_frozen` — the usual BatchNorm policy (running statistics kept where
  a layer's parameters are all frozen), re-applicable after an epoch unfroze something.

Example, a strategy that trains the last two layer groups and the head::

    class TopTwo(FreezingStrategy):
        "Train the last two layer groups and the head. BatchNorm: frozen layers keep their statistics."

        name = "top_two"

        def setup(self, model):
            groups = backbone_group_params(model)  # group0 (stem) … groupK, head
            for i, group in enumerate(groups):
                set_trainable(group.params, i >= len(groups) - 3)
            return groups

        def set_train_mode(self, model):
            freeze_stats_where_frozen(model)
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from tlsearch.kinds._base import Plugin
from tlsearch.kinds.model import TransferModel


@dataclass
class ParamGroup:
    """Parameters that share a learning-rate multiplier (``lr = base_lr * lr_scale``).

    The optimizer is built once from the groups a strategy returns, so the groups must cover every
    parameter it may ever train; a frozen parameter has ``requires_grad = False`` and is skipped.
    A strategy may change ``lr_scale`` and ``requires_grad`` between epochs.
    """

    name: str
    params: list[nn.Parameter]
    lr_scale: float = 1.0


class FreezingStrategy(Plugin):
    """Decides which parameters train and with which learning-rate multiplier.

    Required: :meth:`setup`. Optional: :meth:`on_epoch_start` (gradual unfreezing, LP-FT's switch)
    and :meth:`set_train_mode` (the BatchNorm policy).

    ``backbone_frozen`` is True when the backbone never trains in any epoch: then the trainer may
    compute backbone features once and train the head on them (the feature cache).

    ``probe_l2``: a number when a linear classification head on the cached features should be
    solved to convergence with this L2 strength (:mod:`tlsearch.train.probe`) instead of trained by
    epochs; None (the default) keeps the epoch loop.
    """

    kind: ClassVar[str] = "freezing"
    backbone_frozen: ClassVar[bool] = False

    @property
    def probe_l2(self) -> float | None:
        """The L2 strength of a solved linear probe, or None to train the head by epochs."""
        return None

    @abstractmethod
    def setup(self, model: TransferModel) -> list[ParamGroup]:
        """Set ``requires_grad`` on every parameter and return the optimizer's param groups."""

    def on_epoch_start(self, model: TransferModel, epoch: int, groups: list[ParamGroup]) -> None:  # noqa: B027
        """Called before each epoch (0-based), after ``model.train()`` and before :meth:`set_train_mode`;
        may change ``requires_grad`` and ``groups[i].lr_scale``."""

    def set_train_mode(self, model: TransferModel) -> None:
        """Called at the start of each epoch after ``model.train()`` and :meth:`on_epoch_start`, so the
        policy sees the epoch's own ``requires_grad``.

        Default BatchNorm policy: a normalisation layer whose parameters are all frozen runs in eval
        mode, so its running statistics stay those of pretraining (as when it is frozen in Keras and
        in Lightning's ``BaseFinetuning``). Override to document a different policy.
        """
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                params = list(module.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    module.eval()


#: the normalisation layers :func:`norm_layers` finds: BatchNorm (any dimension, SyncBatchNorm
#: included), GroupNorm, LayerNorm, InstanceNorm. timm's own norm layers derive from these.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def set_trainable(params: Iterable[nn.Parameter], trainable: bool) -> None:
    """Set ``requires_grad`` to ``trainable`` on every parameter of ``params``."""
    for p in params:
        p.requires_grad_(trainable)


def backbone_group_params(model: TransferModel) -> list[ParamGroup]:
    """One :class:`ParamGroup` per backbone layer group, input → output (``group0`` is the stem),
    then ``head``; every ``lr_scale`` 1.0. The groups are the backbone's own
    (:attr:`BuiltBackbone.layer_groups <tlsearch.kinds.BuiltBackbone>`, timm's ``group_matcher``
    for the built-ins), so ``groups[-2]`` is the block nearest the head on any backbone."""
    groups = [ParamGroup(f"group{i}", list(params), 1.0) for i, params in enumerate(model.backbone_groups())]
    return [*groups, ParamGroup("head", model.head_parameters(), 1.0)]


def norm_layers(module: nn.Module) -> list[nn.Module]:
    """Every normalisation layer (:data:`NORM_TYPES`) inside ``module``, in module order."""
    return [m for m in module.modules() if isinstance(m, NORM_TYPES)]


def norm_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The scales and shifts (``weight``, ``bias``) of every normalisation layer inside ``module``."""
    return [p for m in norm_layers(module) for p in m.parameters(recurse=False)]


def freeze_stats_where_frozen(model: TransferModel) -> None:
    """BatchNorm policy: a BatchNorm layer whose parameters are all frozen runs in eval mode (the
    running statistics of pretraining are kept); one with a trainable parameter follows
    ``model.training`` (it trains and updates its statistics).

    Unlike the base class's default :meth:`FreezingStrategy.set_train_mode`, this also puts a layer
    back in train mode, so a strategy that unfreezes parameters in ``on_epoch_start`` can call it
    from its ``set_train_mode`` every epoch (``gradual_unfreeze`` and ``lp_ft`` do). A layer without
    parameters (``affine=False``) counts as frozen.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            trainable = any(p.requires_grad for p in params) if params else False
            module.train(model.training and trainable)
