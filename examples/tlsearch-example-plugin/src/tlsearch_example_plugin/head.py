"""``prototype``: a head plugin of the example package — a nearest-class-mean classifier that
initialises its class weights from the training data (``init_from_data``).

A head's ``build(in_features, out_features)`` sees sizes only; the data arrives through the
optional ``init_from_data(features, targets)`` method of the module it returns, which the trainer
calls once per trial before the first step (see :class:`tlsearch.kinds.Head`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tlsearch.kinds import Head
from tlsearch.space import Float


class PrototypeClassifier(nn.Module):
    """``scale · cos(x − centre, w_c)`` for each class ``c``; ``init_from_data`` sets ``centre`` to the
    features' mean and ``w_c`` to the centred mean of class ``c`` (the class prototype)."""

    def __init__(self, in_features: int, out_features: int, *, scale: float, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)  # inside the module: init_from_data must be its own method
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.register_buffer("centre", torch.zeros(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.dropout(x - self.centre), dim=-1)
        return self.log_scale.exp() * F.linear(x, F.normalize(self.weight, dim=-1))

    def init_from_data(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Class prototypes from the training features (called under ``torch.no_grad()``).

        Regression targets (floats) carry no classes: the head then keeps its random start. A
        class with no training image keeps its random weight too.
        """
        if targets.dtype.is_floating_point:
            return
        self.centre.copy_(features.mean(0))
        centred = F.normalize(features - self.centre, dim=-1)
        for c in range(self.weight.shape[0]):
            members = centred[targets == c]
            if len(members):
                self.weight[c] = members.mean(0)


class PrototypeHead(Head):
    """Nearest-class-mean head: cosine similarity to class prototypes initialised from the training data's class means.

    Before the first step the trainer gives it the training set's features (``init_from_data``):
    the features are centred on their mean and L2-normalised, and each class weight starts at its
    class's mean, so the untrained head already classifies by the nearest class mean; training then
    refines the prototypes and the scale. Source: Mensink et al., *Distance-Based Image
    Classification*, TPAMI 2013 (nearest class mean); Wang et al., *SimpleShot*, arXiv:1911.04623
    (centring + L2 normalisation).
    """

    name = "prototype"
    tasks = ("classification",)  # prototypes are class means
    hyperparameters = {
        "scale": Float(5.0, 30.0, log=True, default=10.0, help="initial logit scale (learnt from there)"),
        "dropout": Float(0.0, 0.5, default=0.0, help="dropout on the features"),
    }
    scale: float
    dropout: float

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if not self.scale > 0:
            raise ValueError(f"prototype: scale must be > 0 but got {self.scale!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"prototype: dropout must be in [0, 1) but got {self.dropout!r}")

    def build(self, in_features: int, out_features: int) -> nn.Module:
        return PrototypeClassifier(in_features, out_features, scale=self.scale, dropout=self.dropout)
