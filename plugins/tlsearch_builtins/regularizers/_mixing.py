"""Batch transforms that mix images and their labels: mixup and cutmix (soft ``(N, C)`` targets)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tlsearch.kinds import Regularizer
from tlsearch.space import Float


def soft_targets(targets: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """Class indices ``(N,)`` → one-hot ``(N, C)`` floats; floating targets (already soft, or
    regression values) are returned as they are, so they mix linearly too."""
    if targets.dtype.is_floating_point:
        return targets
    return F.one_hot(targets.long(), num_outputs).to(torch.float32)


def _mix_targets(targets: torch.Tensor, perm: torch.Tensor, lam: float, num_outputs: int) -> torch.Tensor:
    soft = soft_targets(targets, num_outputs)
    return lam * soft + (1.0 - lam) * soft[perm]


class _Mixing(Regularizer):
    uses_inputs = True
    needs_trainable_backbone = True  # with a frozen backbone it costs the feature cache (~20× time)
    hyperparameters = {
        "alpha": Float(0.1, 1.0, log=True, default=0.2, help="Beta(α, α) for the mixing weight λ"),
        "prob": Float(0.25, 1.0, default=1.0, help="probability that a batch is mixed"),
    }
    alpha: float
    prob: float

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.alpha <= 0:
            raise ValueError(f"{self.name}: alpha must be > 0 but got {self.alpha}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"{self.name}: prob must be in [0, 1] but got {self.prob}")

    def _draw(self, n: int, device: torch.device) -> tuple[float, torch.Tensor] | None:
        """λ and the partner permutation, or None when this batch is not mixed."""
        if n < 2 or float(torch.rand(())) >= self.prob:
            return None
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        return lam, torch.randperm(n, device=device)


class Mixup(_Mixing):
    """Mixup: train on convex combinations ``λ·x_i + (1-λ)·x_j`` with targets ``λ·y_i + (1-λ)·y_j``, λ ~ Beta(α, α).

    Targets become soft ``(N, C)`` probabilities (float regression targets mix the same way).
    Source: Zhang et al., *mixup: Beyond Empirical Risk Minimization*, ICLR 2018 (α 0.1–0.4 on
    ImageNet); searched by Quick-Tune.
    """

    name = "mixup"

    def transform_batch(
        self, images: torch.Tensor, targets: torch.Tensor, *, num_outputs: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        drawn = self._draw(images.shape[0], images.device)
        if drawn is None:
            return images, targets
        lam, perm = drawn
        mixed = lam * images + (1.0 - lam) * images[perm]
        return mixed, _mix_targets(targets, perm, lam, num_outputs)


class CutMix(_Mixing):
    """CutMix: paste a random box of another image of the batch; targets mix by the pasted area.

    λ ~ Beta(α, α) sets the box's area ``(1-λ)·H·W``; after clipping the box to the image, λ is
    recomputed from the exact pasted area, so the targets ``λ·y_i + (1-λ)·y_j`` match the pixels.
    Source: Yun et al., *CutMix*, ICCV 2019 (α = 1); searched by Quick-Tune.
    """

    name = "cutmix"
    hyperparameters = {
        "alpha": Float(0.1, 2.0, log=True, default=1.0, help="Beta(α, α) for the kept area λ"),
        "prob": Float(0.25, 1.0, default=1.0, help="probability that a batch is mixed"),
    }

    @staticmethod
    def box(lam: float, height: int, width: int) -> tuple[int, int, int, int]:
        """A random box ``(top, bottom, left, right)`` of area about ``(1-λ)·H·W``, clipped to the image."""
        ratio = (1.0 - lam) ** 0.5
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        return top, bottom, left, right

    def transform_batch(
        self, images: torch.Tensor, targets: torch.Tensor, *, num_outputs: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        drawn = self._draw(images.shape[0], images.device)
        if drawn is None:
            return images, targets
        lam, perm = drawn
        height, width = images.shape[-2:]
        top, bottom, left, right = self.box(lam, height, width)
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = images[perm][..., top:bottom, left:right]
        kept = 1.0 - (bottom - top) * (right - left) / (height * width)
        return mixed, _mix_targets(targets, perm, kept, num_outputs)
