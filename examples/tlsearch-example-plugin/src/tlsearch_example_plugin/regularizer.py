"""``confidence_penalty``: a regularizer plugin of the example package — a penalty term on the
entropy of the model's predictions (it discourages over-confident outputs).

A regularizer overrides only what it needs; this one needs :meth:`Regularizer.penalty`, which gets
the pooled backbone features of the step (with or without the images), so it also works on a
frozen backbone's cached features.
"""

from __future__ import annotations

from typing import Any

import torch

from tlsearch.kinds import Regularizer, TransferModel
from tlsearch.space import Float


class ConfidencePenalty(Regularizer):
    """Confidence penalty: subtracts ``beta`` × the mean entropy of the predicted class distribution from the loss.

    Penalising low-entropy (over-confident) output distributions regularises like label smoothing
    but adapts per example. Source: Pereyra et al., *Regularizing Neural Networks by Penalizing
    Confident Output Distributions*, ICLR 2017 workshop. The penalty runs the head once more on the
    step's features. Classification only. With a solved linear probe it makes the head train by
    epochs instead (the L-BFGS solver has no penalty term).
    """

    name = "confidence_penalty"
    tasks = ("classification",)
    hyperparameters = {
        "beta": Float(0.01, 1.0, log=True, default=0.1, help="weight of the entropy term"),
    }
    beta: float

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if not self.beta >= 0:
            raise ValueError(f"confidence_penalty: beta must be >= 0 but got {self.beta!r}")

    def penalty(
        self, model: TransferModel, *, images: torch.Tensor | None, features: torch.Tensor
    ) -> torch.Tensor | None:
        log_p = model.head(features).float().log_softmax(dim=-1)
        entropy = -(log_p.exp() * log_p).sum(dim=-1).mean()
        return -self.beta * entropy
