"""Built-in heads: linear, MLP, cosine classifier, regression.

Every head maps ``(N, in_features)`` to ``(N, out_features)`` and works with ``out_features=1``
(regression with one target), as :class:`tlsearch.testing.HeadContract` checks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tlsearch import hookimpl
from tlsearch.kinds import Head, PortfolioEntry
from tlsearch.space import Categorical, Float, Int

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class LinearHead(Head):
    """One linear layer on the pooled features: the standard transfer-learning classifier.

    Optional dropout before it (as timm's classifiers have). Source: e.g. Kornblith et al.,
    *Do Better ImageNet Models Transfer Better?*, CVPR 2019.
    """

    name = "linear"
    default = True
    #: the warm start's head: the one a frozen backbone's probe is solved with
    portfolio = (PortfolioEntry(name="linear", priority=0),)
    hyperparameters = {"dropout": Float(0.0, 0.5, default=0.0, help="dropout on the features")}
    dropout: float

    def build(self, in_features: int, out_features: int) -> nn.Module:
        if not self.dropout:
            return nn.Linear(in_features, out_features)
        return nn.Sequential(nn.Dropout(self.dropout), nn.Linear(in_features, out_features))


class MLPHead(Head):
    """A two-layer perceptron: Linear → LayerNorm → activation → dropout → Linear.

    A non-linear head helps when the pretrained features are far from the target task (e.g. the
    projection heads of SimCLR, Chen et al., ICML 2020). The LayerNorm keeps the hidden layer
    well-scaled whatever the backbone's feature magnitude.
    """

    name = "mlp"
    hyperparameters = {
        "hidden_dim": Int(64, 1024, log=True, default=256, help="hidden width"),
        "dropout": Float(0.0, 0.5, default=0.1),
        "activation": Categorical(tuple(ACTIVATIONS), default="gelu"),
    }
    hidden_dim: int
    dropout: float
    activation: str

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"mlp: activation {self.activation!r} is not valid; valid choices: {', '.join(ACTIVATIONS)}"
            )
        if self.hidden_dim < 1:
            raise ValueError(f"mlp: hidden_dim must be >= 1 but got {self.hidden_dim}")

    def build(self, in_features: int, out_features: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(in_features, self.hidden_dim),
            nn.LayerNorm(self.hidden_dim),
            ACTIVATIONS[self.activation](),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden_dim, out_features),
        )


class CosineClassifier(nn.Module):
    """``scale · cos(feature, w_c)`` for each class ``c``, with a learnable scale (stored as its log)."""

    def __init__(self, in_features: int, out_features: int, *, init_scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))
        return self.log_scale.exp() * cosine


class CosineHead(Head):
    """Cosine (normalised) classifier with a learnable scale: logits = s · cos(feature, class weight).

    Normalising features and weights removes the norm imbalance between classes, which helps with
    few examples per class. Source: Chen et al., *A Closer Look at Few-shot Classification*,
    ICLR 2019 ("Baseline++"); Gidaris & Komodakis, CVPR 2018. With ``out_features=1`` it outputs a
    scaled cosine in ``[-s, s]``, usable for regression of standardised targets.
    """

    name = "cosine"
    hyperparameters = {
        "init_scale": Float(5.0, 30.0, log=True, default=10.0, help="initial scale s (learnt from there)"),
        "dropout": Float(0.0, 0.5, default=0.0),
    }
    init_scale: float
    dropout: float

    def build(self, in_features: int, out_features: int) -> nn.Module:
        classifier = CosineClassifier(in_features, out_features, init_scale=self.init_scale)
        if not self.dropout:
            return classifier
        return nn.Sequential(nn.Dropout(self.dropout), classifier)


class RegressionHead(Head):
    """Regression head: optional hidden layer, then a linear layer to one or more real outputs.

    The output layer starts at zero (weights and bias), so the first predictions are the mean of
    standardised targets and early gradients do not disturb the backbone. ``hidden_dim: 0`` gives
    a linear regressor on the features (the linear probe of regression). Source: standard practice
    in transfer learning for regression, e.g. Kornblith et al., CVPR 2019 (linear evaluation).
    """

    name = "regression"
    tasks = ("regression",)  # its zero-initialised output predicts standardised targets' mean
    hyperparameters = {
        "hidden_dim": Categorical((0, 128, 256, 512), default=0, help="0: no hidden layer"),
        "dropout": Float(0.0, 0.5, default=0.0),
    }
    hidden_dim: int
    dropout: float

    def build(self, in_features: int, out_features: int) -> nn.Module:
        layers: list[nn.Module] = []
        width = in_features
        if self.hidden_dim:
            layers += [nn.Linear(in_features, self.hidden_dim), nn.GELU()]
            width = self.hidden_dim
        if self.dropout:
            layers.append(nn.Dropout(self.dropout))
        out = nn.Linear(width, out_features)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        layers.append(out)
        return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


@hookimpl
def tlsearch_register_heads(register: Any) -> None:
    for cls in (LinearHead, MLPHead, CosineHead, RegressionHead):
        register.add(cls)
