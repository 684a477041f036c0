"""The epoch a trial keeps, and patience: epochs that are not wasted.

A trial's last epoch is not always its best (the learning rate was too high at the end, the model
began to overfit). :class:`BestEpoch` keeps a copy of the weights of the best epoch so far, by the
study's metric and direction, and the trainer puts them back when training ends: the checkpoint,
the export and the trial's value are the best epoch's. With ``patience`` it also says when the
trial has not improved for that many epochs, so the trainer stops it (the trial completes with its
best epoch; it is not a failure and not pruned).

The seam: each epoch the trainer *offers* the weights it evaluated that epoch (a state dict, made
only when the epoch improved, so an epoch that does not improve copies nothing). A trainer that
evaluates another copy of the weights (an exponential moving average, say) offers that copy, and
the kept weights are then that copy's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from tlsearch.errors import TlsearchError

StateFn = Callable[[], Mapping[str, torch.Tensor]]


class StopTraining(TlsearchError):
    """Raised by an ``on_epoch_end`` callback to end training after this epoch, keeping the best
    epoch's weights: the trial completes. ``reason`` (e.g. ``"timeout"``) goes to
    ``FitResult.stopped``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason


def maximizes(metric: str) -> bool:
    """Whether a larger ``metric`` is better (the study's own table: accuracy and r2 are)."""
    from tlsearch.config import METRICS  # the one table of metrics and directions

    for metrics in METRICS.values():
        if metric in metrics:
            return metrics[metric] == "maximize"
    raise ValueError(
        f"unknown metric {metric!r} to keep the best epoch by; "
        f"valid: {', '.join(sorted({m for ms in METRICS.values() for m in ms}))}"
    )


class BestEpoch:
    """The best epoch so far by ``metric`` (larger is better when ``maximize``), its metrics and a
    copy of the weights evaluated in it; ``patience``: epochs without improvement after which
    :meth:`exhausted` is true (None: never)."""

    def __init__(self, metric: str, *, maximize: bool, patience: int | None = None) -> None:
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be >= 1 (or None: off) but got {patience}")
        self.metric = metric
        self.maximize = maximize
        self.patience = patience
        self.epoch = -1
        self.value: float | None = None
        self.metrics: dict[str, float] = {}
        self._state: dict[str, torch.Tensor] | None = None

    def improves(self, metrics: Mapping[str, float]) -> bool:
        """Better by the metric; on a tie (common for accuracy on a small validation set), a lower
        ``val_loss`` is better too."""
        value = float(metrics[self.metric])
        if not math.isfinite(value):
            return False
        if self.value is None:
            return True
        if value != self.value:
            return value > self.value if self.maximize else value < self.value
        loss, best_loss = metrics.get("val_loss"), self.metrics.get("val_loss")
        return self.metric != "val_loss" and loss is not None and best_loss is not None and loss < best_loss

    def offer(self, epoch: int, metrics: Mapping[str, float], state: StateFn) -> bool:
        """Record ``epoch`` if it is the best so far: its metrics and a copy of ``state()`` (the
        weights evaluated in it). A full tie keeps the earlier epoch. Returns whether it improved."""
        if not self.improves(metrics):
            return False
        self.epoch, self.value, self.metrics = epoch, float(metrics[self.metric]), dict(metrics)
        self._state = {name: t.detach().clone() for name, t in state().items()}
        return True

    def exhausted(self, epoch: int) -> bool:
        """True when ``patience`` epochs have passed since the best one (after ``epoch``)."""
        return self.patience is not None and self.epoch >= 0 and epoch - self.epoch >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the kept weights into ``model`` (a part of its state when only a part was offered)."""
        if self._state is None:
            return
        with torch.no_grad():
            current = model.state_dict()
            unknown = [name for name in self._state if name not in current]
            if unknown:
                raise KeyError(f"the kept weights name tensors the model does not have: {unknown[:5]}")
            for name, tensor in self._state.items():
                current[name].copy_(tensor)
