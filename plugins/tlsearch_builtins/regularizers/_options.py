"""Regularizers that only set an option: of the optimizer, the loss, or the backbone's construction."""

from __future__ import annotations

from typing import Any

from tlsearch.kinds import PortfolioEntry, Regularizer
from tlsearch.space import Float


class WeightDecay(Regularizer):
    """Decoupled weight decay (AdamW; Loshchilov & Hutter, ICLR 2019) on weights, not on biases or norms.

    The trainer applies it to parameters with ``ndim >= 2`` only (conv and linear weights).
    """

    name = "weight_decay"
    hyperparameters = {"strength": Float(1e-5, 1e-1, log=True, default=1e-2)}
    strength: float

    def optimizer_options(self) -> dict[str, Any]:
        return {"weight_decay": self.strength}


class LabelSmoothing(Regularizer):
    """Label smoothing: targets (1 - ε) on the true class, ε spread evenly (Szegedy et al., CVPR 2016)."""

    name = "label_smoothing"
    tasks = ("classification",)  # it changes the cross-entropy; regression losses have no labels to smooth
    hyperparameters = {"epsilon": Float(0.0, 0.3, default=0.1)}
    #: on, at 0.1, in the warm start's fine-tunes (Müller et al., *When does label smoothing help?*)
    portfolio = (PortfolioEntry(name="label_smoothing", params={"epsilon": 0.1}, cost="full"),)
    epsilon: float

    def loss_options(self) -> dict[str, Any]:
        return {"label_smoothing": self.epsilon}


class DropPath(Regularizer):
    """Stochastic depth (drop-path): randomly skip residual branches while training.

    Passed to the backbone as ``drop_path_rate`` (timm; ``stochastic_depth_prob`` for torchvision),
    the rate of the deepest block, growing linearly from 0 at the stem. A backbone without residual
    branches ignores it and says so in ``BuiltBackbone.info["drop_path_rate"]``.
    Source: Huang et al., *Deep Networks with Stochastic Depth*, ECCV 2016.
    """

    name = "drop_path"
    hyperparameters = {"rate": Float(0.0, 0.3, default=0.1, help="drop probability of the deepest block")}
    rate: float

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"drop_path: rate must be in [0, 1) but got {self.rate}")

    def backbone_options(self) -> dict[str, Any]:
        return {"drop_path_rate": self.rate}
