"""An exponential moving average (EMA) of a trial's weights, evaluated beside them.

``training.ema: 0.999`` keeps a copy of the model whose weights follow the trained ones,
``ema ← decay·ema + (1 − decay)·θ`` after every optimizer step; the trainer evaluates both each
epoch, and the better one is the epoch's score and, at the end, the weights that are checkpointed
and exported (``FitResult.extras["ema"]`` records which). Averaging the last steps' weights often
generalises better than the last weights (Polyak averaging; Izmailov et al. 2018), and costs one
copy of the model and a fused ``lerp`` per step.

timm's :class:`~timm.utils.ModelEmaV3` does the copy, the decay schedule and the fused update.
Two things are added: only parameters that train this step are averaged (a frozen parameter, and
the whole backbone of a probe, stays exactly its pretrained value and costs nothing), and the
decay warms up, ``min(decay, 1 − (1 + step)^−3/4)`` (timm's ``use_warmup`` with the power it gives
for short runs): a fine-tune of a few hundred steps would otherwise average in mostly the
untrained start (decay 0.999 forgets with a time constant of 1000 steps).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn

from tlsearch.errors import ConfigError

WARMUP_POWER = 3 / 4


class WeightAverage(ModelEmaV3):
    """The EMA copy of ``model`` (``.module``), updated with :meth:`update` after each step.

    Build it before anything registers hooks on ``model`` (a regularizer's ``setup``): the copy
    is made with ``deepcopy``, and a hook copied with it would observe the EMA's evaluations.
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema must be a decay in (0, 1), e.g. 0.999, but got {decay}")
        super().__init__(model, decay=decay, use_warmup=True, warmup_power=WARMUP_POWER)
        ema_params = dict(self.module.named_parameters())
        ema_buffers = dict(self.module.named_buffers())
        self._param_pairs = [(ema_params[name], p) for name, p in model.named_parameters()]
        self._buffer_pairs = [(ema_buffers[name], b) for name, b in model.named_buffers()]
        self.module.requires_grad_(False)

    @torch.no_grad()
    def apply_update_(self, model: Any, decay: float) -> None:  # noqa: ARG002 - pairs made at init
        ema_values: list[torch.Tensor] = []
        model_values: list[torch.Tensor] = []
        for ema_p, p in self._param_pairs:
            if p.requires_grad:
                ema_values.append(ema_p)
                model_values.append(p.detach())
        for ema_b, b in self._buffer_pairs:  # BatchNorm statistics: averaged; counters: copied
            if ema_b.is_floating_point():
                ema_values.append(ema_b)
                model_values.append(b)
            else:
                ema_b.copy_(b)
        if ema_values:
            self._foreach_lerp_(ema_values, model_values, weight=1.0 - decay)

    def copy_to(self, model: nn.Module) -> None:
        """Put the averaged weights into ``model`` (for its checkpoint and export)."""
        with torch.no_grad():
            for ema_p, p in self._param_pairs:
                p.copy_(ema_p)
            for ema_b, b in self._buffer_pairs:
                b.copy_(ema_b)
