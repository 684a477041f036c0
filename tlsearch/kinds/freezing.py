"""Freezing strategies: which parameters train, and at which learning rate."""

from __future__ import annotations

from abc import abstractmethod
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
