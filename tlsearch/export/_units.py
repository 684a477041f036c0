"""Outputs in the user's terms, put into the graph: regression in the targets' units (the target
scale a study trained with), multi-label as sigmoid probabilities."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tlsearch.train.targets import TargetScale

__all__ = ["OriginalUnits", "Probabilities", "scale_metadata"]


class OriginalUnits(nn.Module):
    """``model``'s standardised outputs mapped back to the targets' units (``y · std + mean``), so the
    exported graph itself outputs original units and no reader of the file must know the scale."""

    def __init__(self, model: nn.Module, scale: TargetScale) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(scale.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(scale.std, dtype=torch.float32))
        if hasattr(model, "data_config"):
            self.data_config = model.data_config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.std + self.mean


def scale_metadata(scale: TargetScale) -> dict[str, Any]:
    """The metadata entry ``target_scale``: the training scale and that the graph already applies it
    (``in_graph``), so a reader never applies it twice."""
    return {**scale.to_dict(), "in_graph": True}


class Probabilities(nn.Module):
    """A multi-label model's logits as per-label sigmoid probabilities, in the graph: the file then
    outputs what its thresholds (metadata ``thresholds``) are compared with, and a reader needs no
    activation of its own."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        if hasattr(model, "data_config"):
            self.data_config = model.data_config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))
