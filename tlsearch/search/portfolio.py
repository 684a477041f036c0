"""Warm start: a new study's first trials come from a small portfolio of configurations known to be
strong, then the sampler takes over.

The portfolio (only plugins the study's space has; values clipped into the study's ranges), in
order of priority:

1. ``linear_probe`` — the top-ranked backbone frozen, a linear head, lr 1e-2: cheap (cached
   features) and, with a good backbone, often already competitive (Kornblith et al., *Do Better
   ImageNet Models Transfer Better?*, CVPR 2019).
2. ``finetune`` — the same backbone fine-tuned with layer-wise lr decay 0.75 (else full fine-tuning)
   and label smoothing 0.1, lr 1e-3: the recipe of strong fine-tuning baselines (e.g. BEiT,
   Bao et al. 2022; Müller et al., *When does label smoothing help?*, 2019).
3. With ``search.rank.order_first``: one trial per further ranked backbone (best first). With
   ``warm_start`` and a linear probe in the space it is that backbone's linear probe (the same
   cheap, comparable measurement as entry 1); otherwise only the backbone is fixed and the sampler
   fills in the rest.
4. ``linear_probe_lr…`` — the top backbone's linear probe at further learning rates
   (:data:`PROBE_LRS`): a probe costs seconds on cached features, and its score depends on the lr
   more than on anything else it has.

:func:`warm_start` enqueues the first ``n_trials // 2`` entries by priority and runs them
**cheapest first** (Quick-Tune's cost-aware argument, Arango et al., ICLR 2024): every linear probe
before any fine-tune, so the study has a strong, cheap result after seconds and the expensive
trials are compared against it. Other hyperparameters of the chosen plugins take their declared
defaults; regularizers not named are off. Trials are enqueued with ``study.enqueue_trial`` under the
sampler's namespaced names, once: the study records ``warm_start`` and a resumed study never
enqueues again.
"""

from __future__ import annotations

from typing import Any

import optuna

from tlsearch.config import PluginChoice, ResolvedSpace, StudyConfig
from tlsearch.rank.candidates import Candidate, candidate_params, candidates, default_value, is_suggested
from tlsearch.rank.ranking import RankedBackbone
from tlsearch.space import Fixed, Float, Hyperparameter, Int

WARM_START_ATTR = "warm_start"
PORTFOLIO_ATTR = "portfolio"
LINEAR_PROBE_LR = 1e-2
PROBE_LRS = (3e-2, 3e-3)
"""The further learning rates of the top backbone's linear probe (half a decade either side of
:data:`LINEAR_PROBE_LR`), enqueued when the budget has room."""
FINETUNE_LR = 1e-3
LAYER_DECAY = 0.75
LABEL_SMOOTHING = 0.1


def _clip(hp: Hyperparameter, value: float) -> Any:
    if isinstance(hp, (Float, Int)):
        value = min(max(value, hp.low), hp.high)
        return int(round(value)) if isinstance(hp, Int) else float(value)
    if isinstance(hp, Fixed):
        return hp.value
    return value


def _plugin(
    params: dict[str, Any],
    key: str,
    choice: PluginChoice,
    n_choices: int,
    overrides: dict[str, Any] | None = None,
) -> None:
    """Pick ``choice`` for ``key`` (backbone/head/freezing) with its defaults, ``overrides`` clipped in."""
    if n_choices > 1:
        params[key] = choice.name
    for name, hp in choice.space.params.items():
        if is_suggested(hp):
            value = (overrides or {}).get(name, default_value(hp))
            params[f"{key}.{choice.name}.{name}"] = _clip(hp, value)


def _find(options: tuple[PluginChoice, ...], *names: str) -> PluginChoice | None:
    by_name = {c.name: c for c in options}
    return next((by_name[n] for n in names if n in by_name), None)


def _regularizers(params: dict[str, Any], space: ResolvedSpace, on: dict[str, dict[str, Any]]) -> bool:
    """Switch the regularizers in ``on`` on (with their overrides) and every other one off; False when
    the study's space forbids it (a regularizer it forces on, or one in ``on`` it forces off)."""
    for reg in space.regularizers:
        prefix = f"regularizer.{reg.name}"
        wanted = reg.name in on
        if is_suggested(reg.enabled):
            params[prefix] = wanted
        elif bool(default_value(reg.enabled)) != wanted:
            return False
        if wanted:
            for name, hp in reg.space.params.items():
                if is_suggested(hp):
                    params[f"{prefix}.{name}"] = _clip(hp, on[reg.name].get(name, default_value(hp)))
    return True


def _lr(params: dict[str, Any], space: ResolvedSpace, lr: float) -> None:
    if is_suggested(space.lr):
        params["train.lr"] = _clip(space.lr, lr)


def _probe(
    candidate: Candidate, space: ResolvedSpace, head: PluginChoice, probe: PluginChoice, lr: float
) -> dict[str, Any] | None:
    """The sampler's parameters of ``candidate``'s linear probe at ``lr``; None when the space
    forbids it (a regularizer it forces on)."""
    params = _backbone(candidate, space)
    _plugin(params, "head", head, len(space.head))
    _plugin(params, "freezing", probe, len(space.freezing))
    if not _regularizers(params, space, {}):
        return None
    _lr(params, space, lr)
    return params


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


def portfolio(
    space: ResolvedSpace,
    *,
    ranking: list[RankedBackbone] | None = None,
    order_first: bool = False,
    probe_lrs: tuple[float, ...] = (),
    ranked_probes: bool = False,
) -> list[tuple[str, dict[str, Any]]]:
    """The warm-start trials for ``space`` in order of priority: ``(name, params)`` pairs, params under
    the sampler's names.

    ``ranking`` (best first) picks the backbone; without it, the space's first candidate.
    ``probe_lrs``: further learning rates for the top backbone's linear probe (last; an lr that
    clips to one already probed is skipped). ``ranked_probes``: with ``order_first``, each further
    ranked backbone gets a linear probe instead of a trial with only its backbone fixed."""
    ranked: list[Candidate] = [r.candidate for r in ranking] if ranking else candidates(space)[:1]
    if not ranked:
        return []
    top = ranked[0]
    out: list[tuple[str, dict[str, Any]]] = []
    head = _find(space.head, "linear") or space.head[0]
    probe = _find(space.freezing, "linear_probe")

    if probe is not None:
        params = _probe(top, space, head, probe, LINEAR_PROBE_LR)
        if params is not None:
            out.append(("linear_probe", params))

    tune = _find(space.freezing, "layer_decay", "full_finetune")
    if tune is not None:
        params = _backbone(top, space)
        _plugin(params, "head", head, len(space.head))
        _plugin(params, "freezing", tune, len(space.freezing), {"decay": LAYER_DECAY})
        smoothing = (
            {"label_smoothing": {"epsilon": LABEL_SMOOTHING}}
            if _find(space.regularizers, "label_smoothing")
            else {}
        )
        if _regularizers(params, space, smoothing):
            _lr(params, space, FINETUNE_LR)
            out.append((f"finetune_{tune.name}" + ("_label_smoothing" if smoothing else ""), params))

    if order_first:
        for candidate in ranked[1:]:
            entry = (
                _probe(candidate, space, head, probe, LINEAR_PROBE_LR) if ranked_probes and probe else None
            )
            if entry is not None:
                out.append((f"ranked:{candidate.label}:linear_probe", entry))
            else:
                out.append((f"ranked:{candidate.label}", candidate_params(candidate, space)))

    if probe is not None:
        seen = {p.get("train.lr") for n, p in out if n == "linear_probe"}
        for lr in probe_lrs:
            params = _probe(top, space, head, probe, lr)
            if params is not None and params.get("train.lr") not in seen:
                seen.add(params.get("train.lr"))
                out.append((f"linear_probe_lr{lr:g}", params))
    return out


def cheapest_first(entries: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``entries`` with every linear probe (trains a head on cached features: seconds) before every
    other entry (fine-tunes, or ranked entries whose freezing the sampler picks); the top backbone's
    probes first, stable otherwise."""

    def cost(entry: tuple[str, dict[str, Any]]) -> int:
        name, params = entry
        if params.get("freezing", "linear_probe") != "linear_probe" or not _is_probe(name):
            return 2
        return 1 if name.startswith("ranked:") else 0

    return sorted(entries, key=cost)


def _is_probe(name: str) -> bool:
    return name.startswith("linear_probe") or name.endswith(":linear_probe")


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
        space,
        ranking=ranking,
        order_first=order_first,
        probe_lrs=PROBE_LRS if config.search.warm_start else (),
        ranked_probes=config.search.warm_start,
    )
    if not config.search.warm_start:
        entries = [(n, p) for n, p in entries if n.startswith("ranked:")]
        if ranking:  # order_first alone: the top-ranked backbone first too
            entries.insert(0, (f"ranked:{ranking[0].label}", candidate_params(ranking[0].candidate, space)))
    if config.search.n_trials is not None:
        entries = entries[: max(1, config.search.n_trials // 2)]
    if config.search.warm_start:
        entries = cheapest_first(entries)
    study.set_user_attr(WARM_START_ATTR, [name for name, _ in entries])
    for name, params in entries:
        study.enqueue_trial(params, user_attrs={PORTFOLIO_ATTR: name})
    return [name for name, _ in entries]
