"""The optimizer of a trial: param groups from the freezing strategy, options from regularizers, the schedule."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import torch

from tlsearch.errors import ConfigError
from tlsearch.kinds import ParamGroup, Regularizer

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "constant")


def merge_options(regularizers: Sequence[Regularizer], method: str) -> dict[str, Any]:
    """Merge one kind of options from several regularizers; a key claimed twice is an error."""
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for reg in regularizers:
        for key, value in getattr(reg, method)().items():
            if key in merged:
                raise ConfigError(
                    f"regularizers {owner[key]!r} and {reg.name!r} both set {key!r}; choose one"
                )
            merged[key], owner[key] = value, reg.name
    return merged


def build_optimizer(
    groups: Sequence[ParamGroup],
    *,
    lr: float,
    name: str = "adamw",
    weight_decay: float = 0.0,
    decay_exempt: Collection[torch.Tensor] = (),
    fused: bool = False,
) -> torch.optim.Optimizer:
    """One optimizer over every group; each split into weights (decayed) and biases/norms (not decayed).

    Every optimizer param group carries ``lr_scale`` and the ``ParamGroup`` it came from, so
    :func:`apply_lr` can re-read the strategy's multipliers each epoch. ``fused`` selects the
    single-kernel CUDA implementation (one launch for all parameters instead of several per tensor).
    ``decay_exempt``: parameters another regularizer pulls elsewhere instead (L2-SP's backbone,
    toward θ0; see ``Regularizer.replaces_weight_decay``), so plain decay skips them.
    """
    exempt = {id(p) for p in decay_exempt}
    param_groups: list[dict[str, Any]] = []
    for group in groups:
        decay = [p for p in group.params if p.ndim >= 2 and id(p) not in exempt]
        no_decay = [p for p in group.params if p.ndim < 2 or id(p) in exempt]
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                param_groups.append(
                    {
                        "params": params,
                        "weight_decay": wd,
                        "lr": lr * group.lr_scale,
                        "source": group,
                        "name": group.name,
                    }
                )
    if not param_groups:
        raise ConfigError("the freezing strategy left no parameter to train")
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=0.9, nesterov=True, fused=fused or None)
    raise ConfigError(f"optimizer {name!r} is not valid; valid choices: {', '.join(OPTIMIZERS)}")


def apply_lr(optimizer: torch.optim.Optimizer, *, base_lr: float, factor: float) -> None:
    """Set every group's learning rate to ``base_lr × its group's lr_scale × factor`` (the schedule)."""
    for pg in optimizer.param_groups:
        pg["lr"] = base_lr * pg["source"].lr_scale * factor


def schedule_factor(kind: str, step: int, total: int) -> float:
    """The schedule's multiplier at ``step`` of ``total``: 1 (constant) or a cosine decay to 0."""
    if kind == "constant" or total <= 1:
        return 1.0
    if kind != "cosine":
        raise ConfigError(f"scheduler {kind!r} is not valid; valid choices: {', '.join(SCHEDULERS)}")
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
