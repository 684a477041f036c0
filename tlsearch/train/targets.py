"""Regression targets, standardised for training and restored for everything a user reads.

The regression and cosine heads start near zero and output values of order one, so a study trains on
``(y − mean) / std`` with the mean and standard deviation of the *training split's* targets (one
pair per target column, fixed for the whole study so its trials compare). Everything the user sees
is in the original units: the validation metrics (R², MAE, RMSE), the exported model's outputs (the
scale is applied in the ONNX graph) and ``Predictor``'s values. ``val_loss`` and ``train_loss`` stay
the training loss on standardised targets: Huber's threshold is defined on that scale, and the two
losses stay comparable with each other and across studies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["TargetScale"]


@dataclass(frozen=True)
class TargetScale:
    """Per-column ``mean`` and ``std`` of regression targets: ``standardise`` maps original units to
    the training scale, ``restore`` maps model outputs back. A column whose training targets are all
    equal gets ``std`` 1.0 (only the mean is removed), so nothing divides by zero."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(
                f"target scale needs one mean and one std per column, got {self.mean}, {self.std}"
            )
        bad = [s for s in (*self.mean, *self.std) if not math.isfinite(s)]
        if bad or any(s <= 0 for s in self.std):
            raise ValueError(
                f"target scale must be finite with std > 0, got mean {self.mean}, std {self.std}"
            )

    @classmethod
    def of(cls, targets: Sequence[Sequence[float]] | np.ndarray) -> TargetScale:
        """The scale of ``targets`` ``(N, T)`` (the training split's), population std, 0 → 1."""
        values = np.asarray(targets, dtype=np.float64)
        if values.ndim != 2 or len(values) == 0:
            raise ValueError(f"targets must be a non-empty (N, T) array, got shape {values.shape}")
        mean, std = values.mean(axis=0), values.std(axis=0)
        constant = std <= 1e-12 * np.maximum(1.0, np.abs(mean))  # rounding noise of equal values
        std = np.where(constant, 1.0, std)
        return cls(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))

    def standardise(self, targets: np.ndarray) -> np.ndarray:
        """``(y − mean) / std`` of float targets ``(N, T)``, as float32."""
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        return ((np.asarray(targets, dtype=np.float64) - mean) / std).astype(np.float32)

    def restore(self, values: torch.Tensor) -> torch.Tensor:
        """Model outputs ``(N, T)`` on the training scale → original units (``y · std + mean``)."""
        mean = torch.tensor(self.mean, dtype=values.dtype, device=values.device)
        std = torch.tensor(self.std, dtype=values.dtype, device=values.device)
        return values * std + mean

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetScale:
        return cls(mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]))
