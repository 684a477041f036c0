"""Parameter count and FLOPs of a backbone, measured on the meta device (no memory, no weights).

``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of every matmul and convolution of
one forward pass at the given input size (one multiply-add = 2 FLOPs; ``gmacs`` is half of
``gflops``, the unit timm's tables use). Building and running on ``torch.device("meta")`` allocates
nothing, so even a large model costs well under a second; results are cached per model and size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_CACHE: dict[tuple[str, int | None], dict[str, Any]] = {}


def measure_cost(
    factory: Callable[[], nn.Module], *, key: str, input_size: int | None = None
) -> dict[str, Any]:
    """``{"params", "gflops", "gmacs", "input_size"}`` of the model ``factory()`` builds.

    ``factory`` is called under ``torch.device("meta")``; ``input_size`` defaults to the model's
    ``pretrained_cfg["input_size"]`` (timm), else 224. ``key`` names the model for the cache.
    """
    cache_key = (key, input_size)
    if cache_key not in _CACHE:
        device = torch.device("meta")
        try:
            with device:
                model = factory()
        except NotImplementedError:  # a constructor that reads tensor values (torchvision's RegNet)
            device = torch.device("cpu")
            model = factory()
        model.eval()
        if input_size is None:
            cfg = getattr(model, "pretrained_cfg", None) or {}
            input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        params = sum(p.numel() for p in model.parameters())
        x = torch.zeros(1, 3, input_size, input_size, device=device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        flops = counter.get_total_flops()
        _CACHE[cache_key] = {
            "params": int(params),
            "gflops": round(flops / 1e9, 4),
            "gmacs": round(flops / 2e9, 4),
            "input_size": int(input_size),
        }
    return dict(_CACHE[cache_key])


def cost_at_size(
    factory: Callable[[], nn.Module], *, key: str, input_size: int, native_size: int
) -> dict[str, Any]:
    """:func:`measure_cost` at the trial's ``input_size`` (FLOPs grow with it), or at the model's
    ``native_size`` when the meta-device model cannot run at that size (a ViT built for one size:
    the trial's own model is resized, the meta copy is not)."""
    if input_size != native_size:
        try:
            return measure_cost(factory, key=key, input_size=input_size)
        except Exception:  # noqa: BLE001 - a cost figure is never worth failing a trial for
            pass
    return measure_cost(factory, key=key, input_size=native_size)
