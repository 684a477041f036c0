"""Freezing strategies that change what trains during training (at epoch boundaries)."""

from __future__ import annotations

from typing import Any

from tlsearch.kinds import FreezingStrategy, ParamGroup, TransferModel
from tlsearch.kinds.freezing import backbone_group_params, freeze_stats_where_frozen, set_trainable
from tlsearch.space import Float, Int


class GradualUnfreeze(FreezingStrategy):
    """Gradual unfreezing, top-down: the head trains first, then one more layer group every ``every`` epochs.

    Epochs ``0 … every-1`` train the head only; from epoch ``k · every`` the last ``k`` backbone
    groups train too, until the whole backbone does. Source: Howard & Ruder, *ULMFiT*, ACL 2018.
    BatchNorm: layers in still-frozen groups run in eval mode (pretraining statistics kept); a
    group's BatchNorm layers start updating their statistics in the epoch that unfreezes it.
    """

    name = "gradual_unfreeze"
    hyperparameters = {"every": Int(1, 3, default=1, help="epochs between two unfreezing steps")}
    every: int

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.every < 1:
            raise ValueError(f"gradual_unfreeze: every must be >= 1 but got {self.every}")

    def unfrozen_groups(self, epoch: int, n_groups: int) -> int:
        """How many backbone groups (counted from the output side) train in ``epoch``."""
        return min(epoch // self.every, n_groups)

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        groups = backbone_group_params(model)
        self._apply(model, groups, epoch=0)
        return groups

    def _apply(self, model: TransferModel, groups: list[ParamGroup], *, epoch: int) -> None:
        backbone = groups[:-1]
        k = self.unfrozen_groups(epoch, len(backbone))
        for i, group in enumerate(backbone):
            set_trainable(group.params, i >= len(backbone) - k)
        set_trainable(groups[-1].params, True)

    def on_epoch_start(self, model: TransferModel, epoch: int, groups: list[ParamGroup]) -> None:
        self._apply(model, groups, epoch=epoch)  # the trainer calls set_train_mode next

    def set_train_mode(self, model: TransferModel) -> None:
        freeze_stats_where_frozen(model)


class LPFT(FreezingStrategy):
    """LP-FT: linear probing for ``probe_epochs`` epochs, then full fine-tuning at a lower learning rate.

    Probing first gives the head a good start, so fine-tuning distorts the pretrained features
    less. From epoch ``probe_epochs`` on, every parameter trains and every group's learning rate is
    multiplied by ``ft_lr_scale`` (head included). Source: Kumar et al., *Fine-Tuning can Distort
    Pretrained Features and Underperform Out-of-Distribution*, ICLR 2022.
    BatchNorm: frozen (eval mode, pretraining statistics) while probing; trains in the fine-tuning phase.
    """

    name = "lp_ft"
    hyperparameters = {
        "probe_epochs": Int(1, 5, default=1, help="epochs of linear probing before fine-tuning"),
        "ft_lr_scale": Float(0.01, 0.5, log=True, default=0.1, help="lr multiplier in the fine-tuning phase"),
    }
    probe_epochs: int
    ft_lr_scale: float

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.probe_epochs < 0:
            raise ValueError(f"lp_ft: probe_epochs must be >= 0 but got {self.probe_epochs}")
        if not 0.0 < self.ft_lr_scale <= 1.0:
            raise ValueError(f"lp_ft: ft_lr_scale must be in (0, 1] but got {self.ft_lr_scale}")

    def probing(self, epoch: int) -> bool:
        return epoch < self.probe_epochs

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        groups = [
            ParamGroup("backbone", list(model.backbone.parameters()), 1.0),
            ParamGroup("head", model.head_parameters(), 1.0),
        ]
        self._apply(groups, epoch=0)
        return groups

    def _apply(self, groups: list[ParamGroup], *, epoch: int) -> None:
        probing = self.probing(epoch)
        set_trainable(groups[0].params, not probing)
        set_trainable(groups[1].params, True)
        for group in groups:
            group.lr_scale = 1.0 if probing else self.ft_lr_scale

    def on_epoch_start(self, model: TransferModel, epoch: int, groups: list[ParamGroup]) -> None:
        self._apply(groups, epoch=epoch)  # the trainer calls set_train_mode next

    def set_train_mode(self, model: TransferModel) -> None:
        freeze_stats_where_frozen(model)
