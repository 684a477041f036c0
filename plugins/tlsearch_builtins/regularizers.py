"""Built-in regularizers."""

from __future__ import annotations

from typing import Any

from tlsearch import hookimpl
from tlsearch.kinds import Regularizer
from tlsearch.space import Float


class WeightDecay(Regularizer):
    """Decoupled weight decay (AdamW; Loshchilov & Hutter, ICLR 2019) on weights, not on biases or norms."""

    name = "weight_decay"
    hyperparameters = {"strength": Float(1e-5, 1e-1, log=True, default=1e-2)}
    strength: float

    def optimizer_options(self) -> dict[str, Any]:
        return {"weight_decay": self.strength}


class LabelSmoothing(Regularizer):
    """Label smoothing: targets (1 - ε) on the true class, ε spread evenly (Szegedy et al., CVPR 2016)."""

    name = "label_smoothing"
    hyperparameters = {"epsilon": Float(0.0, 0.3, default=0.1)}
    epsilon: float

    def loss_options(self) -> dict[str, Any]:
        return {"label_smoothing": self.epsilon}


@hookimpl
def tlsearch_register_regularizers(register: Any) -> None:
    register.add(WeightDecay)
    register.add(LabelSmoothing)
