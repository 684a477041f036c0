"""The ranking inside a study: computed once, stored in the study, and applied to its space.

The ranking is a study user attribute (``backbone_ranking``). A resumed study, and every worker
joining it, reads it back instead of ranking again: the space the sampler sees must not change
within a study (Optuna rejects a categorical parameter whose choices change), and the forward
passes are paid once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import optuna
import torch

from tlsearch.config import ResolvedSpace, StudyConfig
from tlsearch.rank.candidates import candidates, narrow_space
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
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[ResolvedSpace, list[RankedBackbone] | None]:
    """``space`` narrowed by the study's ranking (computing and storing it on first use), and the
    ranking; ``space`` unchanged and None when ``search.rank`` is off. ``on_progress(task, done,
    total)`` hears of each candidate scored."""
    settings = config.search.rank
    if settings is None:
        return space, None
    ranking = stored_ranking(study)
    if ranking is None:
        total = len(candidates(space))
        task = f"ranking {total} backbone candidate(s) by {settings.score}"
        log.info(task)
        scored = 0

        def on_candidate(result: RankedBackbone) -> None:
            nonlocal scored
            scored += 1
            if on_progress is not None:
                on_progress(task, scored, total)

        if on_progress is not None:
            on_progress(task, 0, total)
        ranking = rank_backbones(
            space,
            registry=registry,
            data=data,
            task=config.task,
            score=settings.score,
            image_size=config.data.fixed_image_size,
            device=device,
            cache_dir=cache_dir,
            max_images=settings.max_images,
            seed=config.search.seed or 0,
            precision=config.training.precision,
            on_candidate=on_candidate,
        )
        study.set_user_attr(RANK_ATTR, [r.to_dict() for r in ranking])
    keep = kept(ranking, settings.keep_top)
    dropped = [r.label for r in ranking if r not in keep]
    if dropped:
        log.info("search.rank.keep_top=%s drops backbone(s): %s", settings.keep_top, ", ".join(dropped))
    return narrow_space(space, [r.label for r in keep]), keep
