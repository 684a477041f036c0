"""The backbone candidates of a study's space, and the space narrowed to the ones a ranking keeps.

A candidate is one backbone plugin with its categorical hyperparameters fixed: ``backbone:
[resnet18, efficientnet_lite0]`` has two candidates, and so has ``timm: {model: [a, b]}``
(``timm(a)``, ``timm(b)``). Searched numeric hyperparameters take their declared default (clipped to
the study's range), since a zero-cost score cannot tell them apart.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from tlsearch.config import PluginChoice, ResolvedSpace
from tlsearch.space import Categorical, Fixed, Float, Hyperparameter, Int, SearchSpace

MAX_CANDIDATES = 64


@dataclass(frozen=True)
class Candidate:
    """One backbone to score: ``plugin`` name, the hyperparameters to build it with (``params``), and
    ``expanded``: the categorical ones that tell it apart from its siblings (part of the label)."""

    plugin: str
    params: dict[str, Any] = field(default_factory=dict)
    expanded: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.expanded:
            return self.plugin
        values = [str(v) for v in self.expanded.values()]
        return f"{self.plugin}({', '.join(values)})"


def default_value(hp: Hyperparameter) -> Any:
    """The value a hyperparameter takes when not searched: its default, clipped into its range."""
    if isinstance(hp, Fixed):
        return hp.value
    if isinstance(hp, Categorical):
        return hp.default if hp.default in hp.choices else hp.choices[0]
    if isinstance(hp, (Float, Int)):
        value = hp.default if hp.default is not None else (hp.low + hp.high) / 2
        value = min(max(value, hp.low), hp.high)
        return int(round(value)) if isinstance(hp, Int) else float(value)
    return hp.default


def candidates(space: ResolvedSpace) -> list[Candidate]:
    """Every backbone candidate of ``space``, in the order the study lists them."""
    out: list[Candidate] = []
    for choice in space.backbone:
        fixed = {n: default_value(hp) for n, hp in choice.space.params.items()}
        categorical = {
            n: hp.choices
            for n, hp in choice.space.params.items()
            if isinstance(hp, Categorical) and len(hp.choices) > 1
        }
        for values in itertools.product(*categorical.values()):
            expanded = dict(zip(categorical, values, strict=True))
            out.append(Candidate(choice.name, {**fixed, **expanded}, expanded))
            if len(out) > MAX_CANDIDATES:
                raise ValueError(
                    f"the study's backbone space has more than {MAX_CANDIDATES} candidates to rank; "
                    "narrow it (fewer models) or switch search.rank off"
                )
    return out


def narrow_space(space: ResolvedSpace, keep: Iterable[str]) -> ResolvedSpace:
    """``space`` with only the backbone candidates labelled in ``keep``.

    A plugin none of whose candidates is kept leaves the space; a categorical hyperparameter keeps
    the values of the kept candidates (in their declared order). With two or more expanded
    hyperparameters on one plugin, the narrowed space is the product of the kept values."""
    keep = set(keep)
    by_plugin: dict[str, list[Candidate]] = {}
    for c in candidates(space):
        if c.label in keep:
            by_plugin.setdefault(c.plugin, []).append(c)
    if not by_plugin:
        raise ValueError(f"a ranking must keep at least one backbone; kept labels {sorted(keep)} match none")
    narrowed: list[PluginChoice] = []
    for choice in space.backbone:
        kept = by_plugin.get(choice.name)
        if not kept:
            continue
        params = dict(choice.space.params)
        for name, hp in choice.space.params.items():
            if isinstance(hp, Categorical) and len(hp.choices) > 1:
                values = {c.expanded[name] for c in kept}
                params[name] = replace(hp, choices=tuple(v for v in hp.choices if v in values))
        narrowed.append(replace(choice, space=SearchSpace(params)))
    return replace(space, backbone=tuple(narrowed))


def candidate_params(candidate: Candidate, space: ResolvedSpace) -> dict[str, Any]:
    """The sampler's parameters (namespaced names, as :func:`tlsearch.search.sampling.sample_choices`
    suggests them) that pick ``candidate`` in ``space``: only those the sampler really suggests."""
    names = [c.name for c in space.backbone]
    if candidate.plugin not in names:
        raise ValueError(
            f"backbone {candidate.plugin!r} is not in the space; valid choices: {', '.join(names)}"
        )
    choice = next(c for c in space.backbone if c.name == candidate.plugin)
    params: dict[str, Any] = {}
    if len(names) > 1:
        params["backbone"] = candidate.plugin
    for name, hp in choice.space.params.items():
        if is_suggested(hp) and name in candidate.params:
            params[f"backbone.{candidate.plugin}.{name}"] = candidate.params[name]
    return params


def is_suggested(hp: Hyperparameter) -> bool:
    """True when sampling this hyperparameter asks the Optuna trial (so Optuna records it)."""
    if isinstance(hp, Categorical):
        return len(hp.choices) > 1
    if isinstance(hp, (Float, Int)):
        return hp.low != hp.high
    return False
