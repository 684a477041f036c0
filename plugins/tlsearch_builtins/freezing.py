"""Built-in freezing strategies."""

from __future__ import annotations

from typing import Any

from tlsearch import hookimpl
from tlsearch.kinds import FreezingStrategy, ParamGroup, TransferModel
from tlsearch.space import Float


class FullFinetune(FreezingStrategy):
    """Every parameter trains; the backbone at ``backbone_lr_scale`` × the head's learning rate.

    BatchNorm: all layers train and update their running statistics.
    """

    name = "full_finetune"
    hyperparameters = {
        "backbone_lr_scale": Float(0.1, 1.0, log=True, default=1.0, help="backbone lr / head lr"),
    }
    backbone_lr_scale: float

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        for p in model.parameters():
            p.requires_grad_(True)
        return [
            ParamGroup("backbone", list(model.backbone.parameters()), self.backbone_lr_scale),
            ParamGroup("head", model.head_parameters(), 1.0),
        ]


class LinearProbe(FreezingStrategy):
    """The backbone is frozen (weights and BatchNorm statistics); only the head trains.

    BatchNorm: the whole backbone runs in eval mode, so its running statistics never change and its
    features are deterministic (the trainer computes them once: the feature cache).
    Source: the linear-evaluation protocol (e.g. Kornblith et al., *Do Better ImageNet Models
    Transfer Better?*, CVPR 2019).
    """

    name = "linear_probe"
    backbone_frozen = True

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        for p in model.head.parameters():
            p.requires_grad_(True)
        return [ParamGroup("head", model.head_parameters(), 1.0)]

    def set_train_mode(self, model: TransferModel) -> None:
        model.backbone.eval()


@hookimpl
def tlsearch_register_freezing_strategies(register: Any) -> None:
    register.add(FullFinetune)
    register.add(LinearProbe)
