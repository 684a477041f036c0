"""The optimizer of a trial: param groups from the freezing strategy, options from regularizers, the schedule."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import nn

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


def no_weight_decay(model: nn.Module) -> set[int]:
    """Ids of the parameters that weight decay must not touch: biases and norm scales (``ndim < 2``)
    and every parameter a submodule declares through timm's convention, ``no_weight_decay()``
    (names or fnmatch patterns relative to that submodule: ``pos_embed``, ``cls_token``, …) and
    ``no_weight_decay_keywords()`` (substrings, e.g. Swin's ``relative_position_bias_table``).

    Each declaring submodule's names are resolved against its own parameters, so a timm model
    wrapped inside the transfer model (``backbone.…``) or inside a plugin's wrapper is handled.
    Decaying a position embedding or a class token towards 0 erases what pretraining put there.
    """
    excluded = {id(p) for p in model.parameters() if p.ndim < 2}
    for module in model.modules():
        patterns = _declared(module, "no_weight_decay")
        keywords = _declared(module, "no_weight_decay_keywords")
        if not patterns and not keywords:
            continue
        for name, param in module.named_parameters():
            if any(fnmatch.fnmatchcase(name, pat) for pat in patterns) or any(k in name for k in keywords):
                excluded.add(id(param))
    return excluded


def _declared(module: nn.Module, method: str) -> set[str]:
    fn = getattr(type(module), method, None)
    if not callable(fn):
        return set()
    return {str(n) for n in getattr(module, method)()}


def build_optimizer(
    groups: Sequence[ParamGroup],
    *,
    lr: float,
    name: str = "adamw",
    weight_decay: float = 0.0,
    no_decay: Collection[int] | None = None,
    decay_exempt: Collection[torch.Tensor] = (),
    fused: bool = False,
) -> torch.optim.Optimizer:
    """One optimizer over every group; each split into decayed weights and parameters without decay.

    ``no_decay``: ids of the parameters that take no weight decay (see :func:`no_weight_decay`,
    which the trainer passes); by default those with ``ndim < 2`` (biases, norms). Every optimizer
    param group carries the ``ParamGroup`` it came from (``source``), so :func:`apply_lr` can re-read
    the strategy's multipliers each epoch. ``fused`` selects the single-kernel CUDA implementation
    (one launch for all parameters instead of several per tensor).
    ``decay_exempt``: parameters another regularizer pulls elsewhere instead (L2-SP's backbone,
    toward θ0; see ``Regularizer.replaces_weight_decay``), so plain decay skips them.
    """
    exempt = {id(p) for p in decay_exempt}
    param_groups: list[dict[str, Any]] = []
    for group in groups:
        skip = no_decay if no_decay is not None else {id(p) for p in group.params if p.ndim < 2}
        skip = set(skip) | exempt
        decay = [p for p in group.params if id(p) not in skip]
        no_decay_params = [p for p in group.params if id(p) in skip]
        for params, wd in ((decay, weight_decay), (no_decay_params, 0.0)):
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


def warmup_steps(warmup: float, total: int) -> int:
    """How many of ``total`` steps warm up: ``round(warmup × total)`` (``warmup`` a fraction in [0, 1))."""
    if not 0.0 <= warmup < 1.0:
        raise ConfigError(f"warmup must be a fraction of the steps in [0, 1) but got {warmup}")
    return round(warmup * total)


def schedule_factor(kind: str, step: int, total: int, *, warmup: int = 0) -> float:
    """The schedule's multiplier at ``step`` (0-based) of ``total``.

    The first ``warmup`` steps ramp linearly, ``(step + 1) / (warmup + 1)``, up to 1 at step
    ``warmup``; the schedule runs over the remaining steps: 1 (constant) or a cosine decay to 0.
    Warm-up keeps the first updates of a freshly initialised head from wrecking the pretrained
    features while AdamW's moment estimates are still noisy.
    """
    if kind not in SCHEDULERS:
        raise ConfigError(f"scheduler {kind!r} is not valid; valid choices: {', '.join(SCHEDULERS)}")
    if step < warmup:
        return (step + 1) / (warmup + 1)
    remaining = total - warmup
    if kind == "constant" or remaining <= 1:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, remaining) / remaining))
