"""A minimal training loop that calls plugins exactly as tlsearch's trainer does, and records what happened.

It exists so that plugin tests can check behaviour over epochs (what trained, what stayed frozen,
which learning rates were used) without the data pipeline. The order of calls is the trainer's:
``model.train(); strategy.set_train_mode(model); strategy.on_epoch_start(model, epoch, groups)``,
then per step: each regularizer's ``transform_batch`` → ``features = model.forward_features(x)`` →
``out = model.head(features)`` → task loss + Σ ``penalty(model, images=x, features=features)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tlsearch.kinds import FreezingStrategy, ParamGroup, Regularizer, TransferModel


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer (running statistics included), by name."""
    state = {f"param:{n}": p.detach().clone() for n, p in model.named_parameters()}
    state.update({f"buffer:{n}": b.detach().clone() for n, b in model.named_buffers()})
    return state


@dataclass
class EpochRecord:
    """What one epoch of :func:`simulate_training` saw."""

    epoch: int
    trainable: set[str]  # parameter names with requires_grad during the epoch
    lr_scales: dict[str, float]  # group name → lr_scale during the epoch
    bn_training: dict[str, bool]  # BatchNorm module name → training mode during the epoch
    before: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)


def _merged(regularizers: Sequence[Regularizer], method: str) -> dict[str, object]:
    merged: dict[str, object] = {}
    for reg in regularizers:
        for key, value in getattr(reg, method)().items():
            if key in merged:
                raise ValueError(f"option {key!r} is claimed by two regularizers")
            merged[key] = value
    return merged


def build_optimizer(
    groups: Sequence[ParamGroup], *, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """AdamW over ``groups``: one optimizer group per (ParamGroup, decayed or not); decoupled weight
    decay only on parameters with ``ndim >= 2``. Each optimizer group remembers its ParamGroup's index."""
    param_groups = []
    for i, group in enumerate(groups):
        decay = [p for p in group.params if p.ndim >= 2]
        no_decay = [p for p in group.params if p.ndim < 2]
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                param_groups.append(
                    {"params": params, "lr": lr * group.lr_scale, "weight_decay": wd, "index": i}
                )
    return torch.optim.AdamW(param_groups, lr=lr)


def task_loss(
    out: torch.Tensor, targets: torch.Tensor, *, task: str, label_smoothing: float = 0.0
) -> torch.Tensor:
    if task == "regression":
        return F.mse_loss(out, targets.float().view_as(out))
    return F.cross_entropy(out, targets, label_smoothing=label_smoothing)


def simulate_training(
    model: TransferModel,
    strategy: FreezingStrategy,
    *,
    regularizers: Sequence[Regularizer] = (),
    images: torch.Tensor,
    targets: torch.Tensor,
    epochs: int = 2,
    steps_per_epoch: int = 2,
    batch_size: int = 8,
    lr: float = 1e-2,
    task: str = "classification",
    num_outputs: int | None = None,
) -> list[EpochRecord]:
    """Train ``model`` with ``strategy`` and ``regularizers`` as the trainer would; one record per epoch."""
    num_outputs = num_outputs or (int(targets.max()) + 1 if task == "classification" else 1)
    groups = strategy.setup(model)
    for reg in regularizers:
        reg.setup(model, num_outputs=num_outputs, task=task)
    options = _merged(regularizers, "optimizer_options")
    loss_options = _merged(regularizers, "loss_options")
    optimizer = build_optimizer(groups, lr=lr, weight_decay=float(options.get("weight_decay", 0.0)))  # type: ignore[arg-type]
    smoothing = float(loss_options.get("label_smoothing", 0.0))  # type: ignore[arg-type]
    records = []
    g = torch.Generator().manual_seed(0)
    try:
        for epoch in range(epochs):
            model.train()
            strategy.set_train_mode(model)
            strategy.on_epoch_start(model, epoch, groups)
            for pg in optimizer.param_groups:
                pg["lr"] = lr * groups[pg["index"]].lr_scale
            record = EpochRecord(
                epoch=epoch,
                trainable={n for n, p in model.named_parameters() if p.requires_grad},
                lr_scales={group.name: group.lr_scale for group in groups},
                bn_training={
                    n: m.training
                    for n, m in model.named_modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm)
                },
                before=snapshot(model),
                after={},
            )
            for _ in range(steps_per_epoch):
                index = torch.randint(len(images), (batch_size,), generator=g)
                x, y = images[index], targets[index]
                for reg in regularizers:
                    x, y = reg.transform_batch(x, y, num_outputs=num_outputs)
                features = model.forward_features(x)
                out = model.head(features)
                loss = task_loss(out, y, task=task, label_smoothing=smoothing)
                for reg in regularizers:
                    term = reg.penalty(model, images=x, features=features)
                    if term is not None:
                        loss = loss + term
                optimizer.zero_grad(set_to_none=True)
                if loss.requires_grad:
                    loss.backward()
                    optimizer.step()
                record.losses.append(float(loss.detach()))
            record.after = snapshot(model)
            records.append(record)
    finally:
        for reg in regularizers:
            reg.teardown(model)
    return records
