"""The ranking inside a study: computed once, stored in the study, and applied to its space.

The ranking is a study user attribute (``backbone_ranking``). A resumed study, and every worker
joining it, reads it back instead of ranking again: the space the sampler sees must not change
within a study (Optuna rejects a categorical parameter whose choices change), and the forward
passes are paid once.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
import torch

from tlsearch.config import ResolvedSpace, StudyConfig
from tlsearch.rank.candidates import narrow_space
from tlsearch.rank.ranking import RankedBackbone, _StudyImages, rank_backbones

log = logging.getLogger("tlsearch")

RANK_ATTR = "backbone_ranking"


def stored_ranking(study: optuna.Study) -> list[RankedBackbone] | None:
    """The ranking a study stored, best first; None when it has none."""
    stored = study.user_attrs.get(RANK_ATTR)
    return None if stored is None else [RankedBackbone.from_dict(d) for d in stored]


def kept(ranking: list[RankedBackbone], keep_top: int | None) -> list[RankedBackbone]:
    """The candidates a study keeps: the ``keep_top`` best that could be scored (all when None);
    never none, so a study whose every candidate failed to score still searches (and reports why)."""
    usable = [r for r in ranking if r.error is None]
    chosen = usable[:keep_top] if keep_top is not None else usable
    return chosen or ranking


def ranked_space(
    study: optuna.Study,
    *,
    config: StudyConfig,
    space: ResolvedSpace,
    registry: Any,
    data: _StudyImages,
    cache_dir: Any,
    device: torch.device | str = "cpu",
) -> tuple[ResolvedSpace, list[RankedBackbone] | None]:
    """``space`` narrowed by the study's ranking (computing and storing it on first use), and the
    ranking; ``space`` unchanged and None when ``search.rank`` is off."""
    settings = config.search.rank
    if settings is None:
        return space, None
    ranking = stored_ranking(study)
    if ranking is None:
        log.info("ranking %d backbone candidate(s) by %s", len(space.backbone), settings.score)
        ranking = rank_backbones(
            space,
            registry=registry,
            data=data,
            task=config.task,
            score=settings.score,
            image_size=config.data.image_size,
            device=device,
            cache_dir=cache_dir,
            max_images=settings.max_images,
            seed=config.search.seed or 0,
            precision=config.training.precision,
        )
        study.set_user_attr(RANK_ATTR, [r.to_dict() for r in ranking])
    keep = kept(ranking, settings.keep_top)
    dropped = [r.label for r in ranking if r not in keep]
    if dropped:
        log.info("search.rank.keep_top=%s drops backbone(s): %s", settings.keep_top, ", ".join(dropped))
    return narrow_space(space, [r.label for r in keep]), keep
