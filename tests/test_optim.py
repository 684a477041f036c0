"""The optimizer of a trial, pinned at the level of :mod:`tlsearch.train.optim`: regularizers'
options merged without silent overrides, the no-decay set, each param group's lr and decay, the
choice of optimizer, and the schedule's multiplier at each step.

Each test names the one-line bug it catches (see ``benchmarks/mutation``). Tiny modules only.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from tlsearch.errors import ConfigError
from tlsearch.kinds import ParamGroup, Regularizer
from tlsearch.train.optim import (
    apply_lr,
    build_optimizer,
    merge_options,
    no_weight_decay,
    schedule_factor,
    warmup_steps,
)


class _Options(Regularizer):
    name = "options"

    def __init__(self, label: str, options: dict[str, Any]) -> None:
        super().__init__()
        self.label, self.options = label, options

    def optimizer_options(self) -> dict[str, Any]:
        return dict(self.options)


def test_merge_options_combines_regularizers_and_refuses_a_key_claimed_twice() -> None:
    """Bugs caught: a later regularizer silently overriding an earlier one's option; options dropped."""
    merged = merge_options(
        [_Options("a", {"weight_decay": 0.1}), _Options("b", {"momentum": 0.8})], "optimizer_options"
    )
    assert merged == {"weight_decay": 0.1, "momentum": 0.8}
    with pytest.raises(ConfigError, match="'weight_decay'"):
        merge_options(
            [_Options("a", {"weight_decay": 0.1}), _Options("b", {"weight_decay": 0.2})], "optimizer_options"
        )


class _Declares(nn.Module):
    """A timm-style submodule declaring ``no_weight_decay`` (patterns) and keywords (substrings)."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 2))
        self.rel_bias_table = nn.Parameter(torch.zeros(3, 3))
        self.proj = nn.Linear(2, 2)

    def no_weight_decay(self) -> set[str]:
        return {"pos_*"}

    def no_weight_decay_keywords(self) -> set[str]:
        return {"bias_table"}


def test_no_weight_decay_covers_biases_norms_and_what_submodules_declare() -> None:
    """Bugs caught: ``ndim <= 2`` (matrices escape decay); declared names or keywords ignored."""
    model = nn.Sequential(_Declares(), nn.LayerNorm(2), nn.Linear(2, 2))
    excluded = no_weight_decay(model)
    named = dict(model.named_parameters())
    for name in ("0.pos_embed", "0.rel_bias_table", "0.proj.bias", "1.weight", "1.bias", "2.bias"):
        assert id(named[name]) in excluded, name
    for name in ("0.proj.weight", "2.weight"):
        assert id(named[name]) not in excluded, name
    linear = nn.Linear(2, 2)
    assert no_weight_decay(linear) == {id(linear.bias)}  # nothing declared: only ``ndim < 2``


class _PatternsOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 2))

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}


class _KeywordsOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rel_bias_table = nn.Parameter(torch.zeros(3, 3))

    def no_weight_decay_keywords(self) -> set[str]:
        return {"bias_table"}


def test_a_submodule_declaring_only_names_or_only_keywords_is_still_read() -> None:
    """Bug caught: a submodule skipped unless it declares both names and keywords (``not`` dropped)."""
    patterns, keywords = _PatternsOnly(), _KeywordsOnly()
    excluded = no_weight_decay(nn.Sequential(patterns, keywords))
    assert {id(patterns.cls_token), id(keywords.rel_bias_table)} <= excluded


def _groups() -> tuple[nn.Linear, nn.Linear, list[ParamGroup]]:
    body, head = nn.Linear(3, 3), nn.Linear(3, 2)
    return (
        body,
        head,
        [ParamGroup("body", list(body.parameters()), 0.1), ParamGroup("head", list(head.parameters()))],
    )


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_each_group_is_split_into_decayed_weights_and_undecayed_biases_with_its_lr(name: str) -> None:
    """Bugs caught: the lr multiplier dropped or inverted; biases decayed; the wrong optimizer."""
    body, head, groups = _groups()
    optimizer = build_optimizer(groups, lr=0.01, name=name, weight_decay=0.05)
    assert type(optimizer) is {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    seen = {
        (pg["name"], tuple(id(p) for p in pg["params"])): (pg["lr"], pg["weight_decay"])
        for pg in optimizer.param_groups
    }
    assert seen == {
        ("body", (id(body.weight),)): (pytest.approx(0.001), 0.05),
        ("body", (id(body.bias),)): (pytest.approx(0.001), 0.0),
        ("head", (id(head.weight),)): (pytest.approx(0.01), 0.05),
        ("head", (id(head.bias),)): (pytest.approx(0.01), 0.0),
    }
    if name == "sgd":
        assert all(pg["momentum"] == 0.9 and pg["nesterov"] for pg in optimizer.param_groups)


def test_by_default_nothing_decays_and_the_kernel_is_not_fused() -> None:
    """Bugs caught: a default weight decay applied when none is asked for; the CUDA-only fused kernel
    chosen by default (the trainer asks for it on CUDA only)."""
    optimizer = build_optimizer(_groups()[2], lr=0.01)
    assert [pg["weight_decay"] for pg in optimizer.param_groups] == [0.0] * 4
    assert not optimizer.defaults["fused"]


def test_an_explicit_no_decay_set_is_what_takes_no_decay() -> None:
    """Bug caught: the trainer's no-decay set (position embeddings, …) ignored for ``ndim < 2``."""
    body, head, groups = _groups()
    optimizer = build_optimizer(groups, lr=0.01, weight_decay=0.05, no_decay={id(head.weight)})
    decay = {id(p): pg["weight_decay"] for pg in optimizer.param_groups for p in pg["params"]}
    assert decay == {id(body.weight): 0.05, id(body.bias): 0.05, id(head.weight): 0.0, id(head.bias): 0.05}


def test_no_parameter_or_an_unknown_optimizer_is_a_config_error() -> None:
    """Bugs caught: an empty optimizer built silently; a typo'd optimizer name falling back to AdamW."""
    with pytest.raises(ConfigError, match="no parameter"):
        build_optimizer([ParamGroup("empty", [])], lr=0.01)
    with pytest.raises(ConfigError, match="'adam'.*adamw, sgd"):
        build_optimizer(_groups()[2], lr=0.01, name="adam")


def test_apply_lr_rereads_each_groups_multiplier() -> None:
    """Bug caught: a strategy's lr_scale changed between epochs not reaching the optimizer."""
    _, _, groups = _groups()
    optimizer = build_optimizer(groups, lr=0.01)
    groups[0].lr_scale = 0.5
    apply_lr(optimizer, base_lr=0.02, factor=0.25)
    lrs = {pg["name"]: pg["lr"] for pg in optimizer.param_groups}
    assert lrs == {"body": pytest.approx(0.0025), "head": pytest.approx(0.005)}


def test_warmup_steps_is_a_rounded_fraction_and_refuses_out_of_range() -> None:
    """Bugs caught: warm-up of every step (1.0) accepted; a negative fraction accepted; floor not round."""
    assert warmup_steps(0.0, 10) == 0 and warmup_steps(0.25, 10) == 2 and warmup_steps(0.26, 10) == 3
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match=str(bad)):
            warmup_steps(bad, 10)


def test_schedule_factor_warms_up_then_decays_by_cosine_to_zero() -> None:
    """Bugs caught: the warm-up ramp off by one step; the cosine not reaching 0; a short schedule dividing by 0;
    a two-step schedule taken for a one-step one (``remaining <= 2``)."""
    assert [schedule_factor("constant", s, 10, warmup=3) for s in range(5)] == pytest.approx(
        [0.25, 0.5, 0.75, 1, 1]
    )
    cosine = [schedule_factor("cosine", s, 6, warmup=2) for s in range(2, 7)]
    assert cosine == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)])
    assert cosine[0] == 1.0 and cosine[-1] == pytest.approx(0.0, abs=1e-12)
    assert schedule_factor("cosine", 1, 2, warmup=1) == 1.0  # one step after warm-up: no decay to run
    assert schedule_factor("cosine", 1, 2) == pytest.approx(0.5)  # two steps: the second is half-way
    assert schedule_factor("cosine", 0, 1) == 1.0
    with pytest.raises(ConfigError, match="'linear'.*cosine, constant"):
        schedule_factor("linear", 0, 10)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_asking_for_the_fused_kernel_gets_it(name: str) -> None:
    """Bug caught: the fused kernel the trainer asks for on CUDA (one launch for all parameters) dropped."""
    assert build_optimizer(_groups()[2], lr=0.01, name=name, fused=True).defaults["fused"] is True
