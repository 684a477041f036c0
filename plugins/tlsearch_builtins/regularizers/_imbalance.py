"""Class-imbalance tools: loss options (:mod:`tlsearch.train.losses` says what each does) and a
class-balanced sampler (the :meth:`~tlsearch.kinds.Regularizer.class_sampling_weights` hook)."""

from __future__ import annotations

from typing import Any

import torch

from tlsearch.kinds import Regularizer
from tlsearch.space import Categorical, Float


class ClassWeightedLoss(Regularizer):
    """Cross-entropy weighted per class: ``inverse`` frequency, or the ``effective`` number of
    samples ``(1 - β^n) / (1 - β)`` (Cui et al., CVPR 2019; β is searched, β → 1 is ``inverse``).

    Multi-label: each label's positives weighted against its negatives by the same schemes
    (BCE's ``pos_weight``; :mod:`tlsearch.train.losses`)."""

    name = "class_weights"
    tasks = ("classification", "multilabel")
    hyperparameters = {
        "scheme": Categorical(("inverse", "effective"), default="effective"),
        "beta": Float(0.9, 0.9999, default=0.999, help="effective scheme: β of the effective number"),
    }
    scheme: str
    beta: float

    def loss_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"class_weighting": self.scheme}
        if self.scheme == "effective":
            options["class_weighting_beta"] = self.beta
        return options


class FocalLoss(Regularizer):
    """Focal loss (Lin et al., ICCV 2017): each example's cross-entropy scaled by ``(1 - p_true)^γ``,
    so well-classified (mostly majority-class) examples weigh less; γ = 0 is cross-entropy.
    Multi-label: the binary form, each label's term scaled by ``(1 - p_t)^γ``."""

    name = "focal_loss"
    tasks = ("classification", "multilabel")
    hyperparameters = {"gamma": Float(0.0, 5.0, default=2.0)}
    gamma: float

    def loss_options(self) -> dict[str, Any]:
        return {"focal_gamma": self.gamma}


class LogitAdjustment(Regularizer):
    """Logit-adjusted loss (Menon et al., ICLR 2021): training sees ``logits + τ log(prior)``, the
    model predicts with plain logits, which moves the decision boundary toward the frequent classes'
    side (τ = 1 is the paper's Fisher-consistent choice for balanced error)."""

    name = "logit_adjustment"
    tasks = ("classification",)
    hyperparameters = {"tau": Float(0.25, 2.0, default=1.0)}
    tau: float

    def loss_options(self) -> dict[str, Any]:
        return {"logit_adjustment_tau": self.tau}


class BalancedSampler(Regularizer):
    """Class-balanced sampling: each epoch draws as many training images as there are, with
    replacement, class ``c`` with probability ∝ ``n_c^(1 - power)`` (power 1: every class equally
    often; 0: as the data is). A head solved by L-BFGS on cached features sees all images instead."""

    name = "balanced_sampler"
    tasks = ("classification",)
    hyperparameters = {"power": Float(0.0, 1.0, default=1.0, help="1: balanced, 0: natural frequencies")}
    power: float

    def class_sampling_weights(self, counts: torch.Tensor) -> torch.Tensor | None:
        return counts.clamp_min(1).pow(-self.power) * (counts > 0)
