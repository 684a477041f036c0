"""Tiny models and synthetic images for tests: fast on a CPU, no download, deterministic."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from tlsearch.kinds import Backbone, BuiltBackbone, TransferModel
from tlsearch.preprocessing import DataConfig
from tlsearch.space import Int


class TinyCNN(nn.Module):
    """stem (conv, BN) → stage1 (conv, BN) → stage2 (conv, BN) → global average pool."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = block(3, width, 1)
        self.stage1 = block(width, 2 * width, 2)
        self.stage2 = block(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stage2(self.stage1(self.stem(x)))).flatten(1)


class TinyBackbone(Backbone):
    """A three-group CNN with BatchNorm (random weights), for testing heads, freezing strategies and regularizers.

    Not registered anywhere: tests build it directly. Layer groups: ``stem``, ``stage1``, ``stage2``.
    """

    name = "tiny_cnn"
    family = "testing"
    hyperparameters = {"width": Int(4, 32, default=8)}
    width: int

    def build(self, **options: Any) -> BuiltBackbone:
        module = TinyCNN(self.width)
        groups = [
            [f"{child}.{n}" for n, _ in getattr(module, child).named_parameters()]
            for child in ("stem", "stage1", "stage2")
        ]
        return BuiltBackbone(
            module=module,
            num_features=4 * self.width,
            data_config=DataConfig(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
            layer_groups=groups,
            info={"family": "testing", "params": sum(p.numel() for p in module.parameters())},
        )


def tiny_transfer_model(
    backbone: Backbone | BuiltBackbone | None = None,
    *,
    num_outputs: int = 3,
    head: nn.Module | None = None,
    seed: int = 0,
) -> TransferModel:
    """A :class:`TransferModel` of ``backbone`` (default: :class:`TinyBackbone`) and ``head`` (default: linear)."""
    torch.manual_seed(seed)
    built = backbone if isinstance(backbone, BuiltBackbone) else (backbone or TinyBackbone()).build()
    return TransferModel(built, head if head is not None else nn.Linear(built.num_features, num_outputs))


def synthetic_images(
    n: int, *, size: int = 32, num_classes: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` normalised images ``(n, 3, size, size)`` and labels ``(n,)``: class ``c`` is a stripe
    pattern at angle ``c·π/num_classes`` with random phase, frequency and colour, plus noise. The
    classes have the same mean colour, so a model must look at structure to tell them apart."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    images = torch.empty(n, 3, size, size)
    for i in range(n):
        angle = float(labels[i]) * math.pi / num_classes + 0.2 * float(torch.randn((), generator=g))
        freq = 3.0 + 4.0 * float(torch.rand((), generator=g))
        phase = 2 * math.pi * float(torch.rand((), generator=g))
        wave = torch.sin(freq * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
        colour = 0.5 + 0.5 * torch.rand(3, 1, 1, generator=g)
        images[i] = wave * colour + 0.3 * torch.randn(3, size, size, generator=g)
    return images, labels
