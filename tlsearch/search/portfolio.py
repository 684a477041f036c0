"""Warm start: a new study's first trials come from a small portfolio of configurations known to be
strong, then the sampler takes over.

The portfolio (only plugins the study's space has; values clipped into the study's ranges):

1. ``linear_probe`` — the top-ranked backbone frozen, a linear head, lr 1e-2: cheap (cached
   features) and, with a good backbone, often already competitive (Kornblith et al., *Do Better
   ImageNet Models Transfer Better?*, CVPR 2019).
2. ``finetune`` — the same backbone fine-tuned with layer-wise lr decay 0.75 (else full fine-tuning)
   and label smoothing 0.1, lr 1e-3: the recipe of strong fine-tuning baselines (e.g. BEiT,
   Bao et al. 2022; Müller et al., *When does label smoothing help?*, 2019).
3. With ``search.rank.order_first``: one trial per further ranked backbone (best first), with only
   the backbone fixed; the sampler fills in the rest.

Other hyperparameters of the chosen plugins take their declared defaults; regularizers not named
are off. Trials are enqueued with ``study.enqueue_trial`` under the sampler's namespaced names, once:
the study records ``warm_start`` and a resumed study never enqueues again.
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


def portfolio(
    space: ResolvedSpace, *, ranking: list[RankedBackbone] | None = None, order_first: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """The warm-start trials for ``space``: ``(name, params)`` pairs, params under the sampler's names.

    ``ranking`` (best first) picks the backbone; without it, the space's first candidate."""
    ranked: list[Candidate] = [r.candidate for r in ranking] if ranking else candidates(space)[:1]
    if not ranked:
        return []
    top = ranked[0]
    out: list[tuple[str, dict[str, Any]]] = []
    head = _find(space.head, "linear") or space.head[0]
    base = candidate_params(top, space)
    backbone_choice = next(c for c in space.backbone if c.name == top.plugin)
    for name, hp in backbone_choice.space.params.items():  # the candidate's non-expanded values too
        if is_suggested(hp) and f"backbone.{top.plugin}.{name}" not in base:
            base[f"backbone.{top.plugin}.{name}"] = _clip(hp, top.params.get(name, default_value(hp)))

    probe = _find(space.freezing, "linear_probe")
    if probe is not None:
        params = dict(base)
        _plugin(params, "head", head, len(space.head))
        _plugin(params, "freezing", probe, len(space.freezing))
        if _regularizers(params, space, {}):
            _lr(params, space, LINEAR_PROBE_LR)
            out.append(("linear_probe", params))

    tune = _find(space.freezing, "layer_decay", "full_finetune")
    if tune is not None:
        params = dict(base)
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
            out.append((f"ranked:{candidate.label}", candidate_params(candidate, space)))
    return out


def warm_start(
    study: optuna.Study,
    *,
    config: StudyConfig,
    space: ResolvedSpace,
    ranking: list[RankedBackbone] | None = None,
) -> list[str]:
    """Enqueue the study's warm-start trials once: only into a study with no trials yet and no
    ``warm_start`` record. Returns the names of the enqueued configurations (empty when none)."""
    order_first = ranking is not None and config.search.rank is not None and config.search.rank.order_first
    if not config.search.warm_start and not order_first:
        return []
    if WARM_START_ATTR in study.user_attrs or study.get_trials(deepcopy=False):
        return []
    entries = portfolio(space, ranking=ranking, order_first=order_first)
    if not config.search.warm_start:
        entries = [(n, p) for n, p in entries if n.startswith("ranked:")]
        if ranking:  # order_first alone: the top-ranked backbone first too
            entries.insert(0, (f"ranked:{ranking[0].label}", candidate_params(ranking[0].candidate, space)))
    if config.search.n_trials is not None:
        entries = entries[: max(1, config.search.n_trials // 2)]
    study.set_user_attr(WARM_START_ATTR, [name for name, _ in entries])
    for name, params in entries:
        study.enqueue_trial(params, user_attrs={PORTFOLIO_ATTR: name})
    return [name for name, _ in entries]
