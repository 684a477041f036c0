"""Warm start: a new study's first trials come from a small portfolio of configurations known to be
strong, then the sampler takes over.

The core names no plugin: each plugin of the study's space declares what it recommends
(``portfolio``, a tuple of :class:`~tlsearch.kinds.PortfolioEntry`; what an entry means for each
kind: :mod:`tlsearch.kinds.portfolio`), and :func:`portfolio` composes the trials from those
declarations, values clipped into the study's ranges:

1. every entry of the study's freezing strategies, on the top-ranked backbone (the space's first
   without a ranking) with the warm-start head and the regularizers whose entries share the
   entry's cost, in order of ``priority``; of entries sharing a ``slot`` only the best-priority
   one joins;
2. with ``search.rank.order_first``: one trial per further ranked backbone, best first, at
   :data:`RANKED_PRIORITY`. With ``warm_start`` it is that backbone's best cheap entry (the same
   cheap, comparable measurement the top backbone got); otherwise only the backbone is fixed and
   the sampler fills in the rest.

What the built-ins declare (see docs/smarter-search.md, "Where the defaults come from"): the solved
linear probe first (cheap: cached features, solved to convergence; Kornblith et al., CVPR 2019),
then one fine-tune (layer-wise lr decay 0.75 where the study has it, else full fine-tuning, with
label smoothing 0.1, lr 1e-3; BEiT, Bao et al. 2022; Müller et al. 2019), then the probe at
further L2 strengths when the budget has room.

:func:`warm_start` enqueues the first ``n_trials // 2`` entries by priority and runs them
**cheapest first** (Quick-Tune's cost-aware argument, Arango et al., ICLR 2024): every cheap entry
before any fine-tune, so the study has a strong, cheap result after seconds and the expensive
trials are compared against it. Other hyperparameters of the chosen plugins take their declared
defaults; regularizers without an entry of that cost are off. Trials are enqueued with
``study.enqueue_trial`` under the sampler's names, once: the study records ``warm_start`` and a
resumed study never enqueues again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from tlsearch.config import PluginChoice, ResolvedSpace, StudyConfig
from tlsearch.kinds.portfolio import PortfolioEntry
from tlsearch.rank.candidates import Candidate, candidate_params, candidates, default_value, is_suggested
from tlsearch.rank.ranking import RankedBackbone
from tlsearch.space import Fixed, Float, Hyperparameter, Int

WARM_START_ATTR = "warm_start"
PORTFOLIO_ATTR = "portfolio"
#: a warm-start trial's own training settings (its entry's ``training``), read by the objective
TRAINING_ATTR = "portfolio_training"
RANKED_PRIORITY = 50
"""Where the further ranked backbones' trials stand among the declared entries' priorities: after
a study's first probe and fine-tune (the built-ins declare 0 and 10–11), before further variants."""


@dataclass(frozen=True)
class Planned:
    """One warm-start trial: its recorded ``name``, the sampler's ``params``, and its ``order`` for
    :func:`cheapest_first` (0: a cheap entry on the top backbone, 1: a further ranked backbone's
    cheap entry, 2: the rest); ``training``: its entry's own training settings
    (:attr:`PortfolioEntry.training`)."""

    name: str
    params: dict[str, Any]
    order: int = 2
    training: Mapping[str, Any] = field(default_factory=dict)


def _clip(hp: Hyperparameter, value: float) -> Any:
    if isinstance(hp, (Float, Int)):
        value = min(max(value, hp.low), hp.high)
        return int(round(value)) if isinstance(hp, Int) else float(value)
    if isinstance(hp, Fixed):
        return hp.value
    return value


def _entries(choice: PluginChoice) -> tuple[PortfolioEntry, ...]:
    return tuple(getattr(choice.plugin, "portfolio", ()))


def _plugin(
    params: dict[str, Any],
    key: str,
    choice: PluginChoice,
    n_choices: int,
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """Pick ``choice`` for ``key`` (backbone/head/freezing) with its defaults, ``overrides`` clipped in."""
    if n_choices > 1:
        params[key] = choice.name
    for name, hp in choice.space.params.items():
        if is_suggested(hp):
            value = (overrides or {}).get(name, default_value(hp))
            params[f"{key}.{choice.name}.{name}"] = _clip(hp, value)


def _regularizers(params: dict[str, Any], space: ResolvedSpace, cost: str) -> list[str] | None:
    """Switch on each regularizer with an entry of ``cost`` (its params) and every other one off.
    Returns the names of the entries switched on; None when the study's space forbids it (a
    regularizer it forces on, or one with an entry it forces off)."""
    used: list[str] = []
    for reg in space.regularizers:
        entry = next((e for e in _entries(reg) if e.cost == cost), None)
        prefix = f"regularizer.{reg.name}"
        wanted = entry is not None
        if is_suggested(reg.enabled):
            params[prefix] = wanted
        elif bool(default_value(reg.enabled)) != wanted:
            return None
        if entry is not None:
            used.append(entry.name)
            for name, hp in reg.space.params.items():
                if is_suggested(hp):
                    params[f"{prefix}.{name}"] = _clip(hp, entry.params.get(name, default_value(hp)))
    return used


def _backbone(candidate: Candidate, space: ResolvedSpace) -> dict[str, Any]:
    """The sampler's parameters that pick ``candidate``, its non-expanded values included."""
    base = candidate_params(candidate, space)
    choice = next(c for c in space.backbone if c.name == candidate.plugin)
    for name, hp in choice.space.params.items():
        if is_suggested(hp) and f"backbone.{candidate.plugin}.{name}" not in base:
            base[f"backbone.{candidate.plugin}.{name}"] = _clip(
                hp, candidate.params.get(name, default_value(hp))
            )
    return base


def _head(space: ResolvedSpace) -> tuple[PluginChoice, PortfolioEntry | None]:
    """The warm-start head: the study's head with the best-priority entry, else its first."""
    declared = [(e.priority, i, c, e) for i, c in enumerate(space.head) for e in _entries(c)]
    if not declared:
        return space.head[0], None
    _, _, choice, entry = min(declared, key=lambda d: (d[0], d[1]))
    return choice, entry


def _strategy_entries(space: ResolvedSpace) -> list[tuple[PluginChoice, PortfolioEntry]]:
    """The study's freezing strategies' entries by priority (stable), one per ``slot``."""
    declared = [(c, e) for c in space.freezing for e in _entries(c)]
    declared.sort(key=lambda d: d[1].priority)
    out, slots = [], set()
    for choice, entry in declared:
        if entry.slot is not None:
            if entry.slot in slots:
                continue
            slots.add(entry.slot)
        out.append((choice, entry))
    return out


def _trial(
    candidate: Candidate, space: ResolvedSpace, strategy: PluginChoice, entry: PortfolioEntry
) -> tuple[str, dict[str, Any]] | None:
    """The name and the sampler's parameters of ``entry`` on ``candidate``; None when the space
    forbids it."""
    head, head_entry = _head(space)
    params = _backbone(candidate, space)
    _plugin(params, "head", head, len(space.head), head_entry.params if head_entry else None)
    _plugin(params, "freezing", strategy, len(space.freezing), entry.params)
    regularizers = _regularizers(params, space, entry.cost)
    if regularizers is None:
        return None
    if entry.lr is not None and is_suggested(space.lr):
        params["train.lr"] = _clip(space.lr, entry.lr)
    return "_".join([entry.name, *regularizers]), params


def portfolio(
    space: ResolvedSpace,
    *,
    ranking: list[RankedBackbone] | None = None,
    order_first: bool = False,
    ranked_probes: bool = False,
) -> list[Planned]:
    """The warm-start trials for ``space`` in order of priority (see the module doc).

    ``ranking`` (best first) picks the backbone; without it, the space's first candidate.
    ``ranked_probes``: with ``order_first``, each further ranked backbone gets the study's
    best-priority cheap entry instead of a trial with only its backbone fixed. An entry whose
    parameters (after clipping) equal an earlier one's is skipped."""
    ranked: list[Candidate] = [r.candidate for r in ranking] if ranking else candidates(space)[:1]
    if not ranked:
        return []
    top = ranked[0]
    scheduled: list[tuple[int, Planned]] = []
    strategies = _strategy_entries(space)
    for strategy, entry in strategies:
        made = _trial(top, space, strategy, entry)
        if made is not None:
            order = 0 if entry.cost == "cheap" else 2
            scheduled.append((entry.priority, Planned(made[0], made[1], order, dict(entry.training))))

    if order_first:
        cheap = next(((c, e) for c, e in strategies if e.cost == "cheap"), None)
        for candidate in ranked[1:]:
            made = _trial(candidate, space, *cheap) if ranked_probes and cheap else None
            if made is not None:
                planned = Planned(
                    f"ranked:{candidate.label}:{made[0]}",
                    made[1],
                    1,
                    dict(cheap[1].training) if cheap else {},
                )
            else:
                planned = Planned(f"ranked:{candidate.label}", candidate_params(candidate, space))
            scheduled.append((RANKED_PRIORITY, planned))

    scheduled.sort(key=lambda s: s[0])
    out: list[Planned] = []
    for _, planned in scheduled:
        if all(planned.params != p.params for p in out):
            out.append(planned)
    return out


def cheapest_first(entries: list[Planned]) -> list[Planned]:
    """``entries`` with every cheap entry (a frozen backbone on cached features: seconds) before
    every other one (fine-tunes, or ranked entries whose freezing the sampler picks); the top
    backbone's first, stable otherwise."""
    return sorted(entries, key=lambda e: e.order)


def warm_start(
    study: optuna.Study,
    *,
    config: StudyConfig,
    space: ResolvedSpace,
    ranking: list[RankedBackbone] | None = None,
) -> list[str]:
    """Enqueue the study's warm-start trials once: only into a study with no trials yet and no
    ``warm_start`` record. At most ``n_trials // 2`` entries, chosen by priority (see
    :func:`portfolio`) and run cheapest first (:func:`cheapest_first`). Returns the names of the
    enqueued configurations, in the order they run (empty when none)."""
    order_first = ranking is not None and config.search.rank is not None and config.search.rank.order_first
    if not config.search.warm_start and not order_first:
        return []
    if WARM_START_ATTR in study.user_attrs or study.get_trials(deepcopy=False):
        return []
    entries = portfolio(
        space, ranking=ranking, order_first=order_first, ranked_probes=config.search.warm_start
    )
    if not config.search.warm_start:
        entries = [e for e in entries if e.name.startswith("ranked:")]
        if ranking:  # order_first alone: the top-ranked backbone first too
            top = ranking[0]
            entries.insert(0, Planned(f"ranked:{top.label}", candidate_params(top.candidate, space)))
    if config.search.n_trials is not None:
        entries = entries[: max(1, config.search.n_trials // 2)]
    if config.search.warm_start:
        entries = cheapest_first(entries)
    study.set_user_attr(WARM_START_ATTR, [e.name for e in entries])
    for entry in entries:
        attrs: dict[str, Any] = {PORTFOLIO_ATTR: entry.name}
        if entry.training:
            attrs[TRAINING_ATTR] = dict(entry.training)
        study.enqueue_trial(entry.params, user_attrs=attrs)
    return [e.name for e in entries]
