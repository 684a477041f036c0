"""A trial's training settings: the study's ``training`` section with its searched values resolved.

:class:`tlsearch.config.TrainingSettings` is the one definition of the settings and their defaults
(a study file's ``training:``; a value there may be a list or range to search). :class:`TrainSettings`
is what the loop reads for one trial: every value concrete, plus the trial's sampled learning rate
and the settings no study file sets (``data_budget_fraction``, ``solve_probe``, ``metric``,
``select_metric``). Its defaults are the study's; :meth:`TrainSettings.for_trial` builds it from a
study config and a trial's sampled choices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tlsearch.config import METRICS, Range, StudyConfig, TrainingSettings
from tlsearch.data.batches import DEFAULT_BUDGET_FRACTION
from tlsearch.data.policies import AugmentPolicy, policy_name
from tlsearch.train.metrics import DEFAULT_TOP_K

__all__ = ["TrainSettings"]


def _default(name: str) -> Any:
    """The study file's default of ``training.<name>`` (the one place defaults are written)."""
    return TrainingSettings.model_fields[name].default


def _fixed(value: Any) -> Any:
    """A study's fixed setting; a searched one (a list) that a trial lacks takes its first value."""
    return value[0] if isinstance(value, list) else value


@dataclass
class TrainSettings:
    """What the loop needs of a study's ``training`` section (see
    :class:`tlsearch.config.TrainingSettings` for each setting), for one trial.

    Beyond the study file's settings: ``lr`` is the trial's sampled learning rate (built without
    one: 1e-3, torch's AdamW default);
    ``data_budget_fraction`` of free GPU memory the images may take to stay resident;
    ``solve_probe``: solve a linear head on cached features when the strategy asks (``probe_l2``,
    see :mod:`tlsearch.train.probe`), False trains it by epochs as any head; ``metric``: what the
    EMA copy must beat the raw weights on (None: the task's first); ``select_metric``: the
    validation metric that picks the epoch whose weights the trial keeps (None: the task's first,
    accuracy or r2; its direction is the metric's own), see :mod:`tlsearch.train.best`;
    ``budget_share``: with a time budget (``Trainer.fit``'s ``fit_epochs``), the share of the time
    left that the trial's epochs may grow to fill after its first epoch (None: they never grow;
    a warm-start fine-tune's, see :class:`~tlsearch.kinds.PortfolioEntry`).
    ``augment`` also takes ``True`` / ``False`` (``crop_flip`` / ``none``).
    """

    epochs: int = _default("epochs")
    batch_size: int = _default("batch_size")
    lr: float = 1e-3
    optimizer: str = _default("optimizer")
    scheduler: str = _default("scheduler")
    augment: bool | str = _default("augment")
    loss: str = _default("loss")
    eval_batch_size: int | None = _default("eval_batch_size")
    precision: str = _default("precision")
    data_placement: str = _default("data_placement")
    loader_workers: int | None = _default("loader_workers")
    compile: str = _default("compile")
    feature_cache: bool = _default("feature_cache")
    augment_frozen: bool = _default("augment_frozen")
    data_budget_fraction: float = DEFAULT_BUDGET_FRACTION
    warmup: float = _default("warmup")
    clip_grad_norm: float | None = _default("clip_grad_norm")
    solve_probe: bool = True
    randaugment_magnitude: int = _default("randaugment_magnitude")
    random_erasing: float = _default("random_erasing")
    ema: float | None = _default("ema")
    metric: str | None = None
    top_k: int = DEFAULT_TOP_K  # k of the top_k_accuracy metric (capped at the class count)
    select_metric: str | None = None
    patience: int | None = _default("patience")
    budget_share: float | None = None

    def augment_policy(self) -> AugmentPolicy:
        return AugmentPolicy(policy_name(self.augment), self.randaugment_magnitude, self.random_erasing)

    @classmethod
    def for_trial(
        cls,
        config: StudyConfig,
        *,
        batch_size: int,
        lr: float,
        choices: Mapping[str, Any] | None = None,
        portfolio: Mapping[str, Any] | None = None,
    ) -> TrainSettings:
        """One trial's settings: the study's ``training`` section, each searched setting (a list
        or range) taken from the trial's ``choices`` (``train.<name>``); a trial made without it
        (recorded before the setting was searched) takes a list's first value, or this class's
        default for a range.

        ``portfolio``: a warm-start trial's own settings (its entry's ``training``,
        :class:`~tlsearch.kinds.PortfolioEntry`): ``epochs`` raises the study's to at least that
        many; ``ema`` and ``warmup`` apply where the study file does not set them; ``budget_share``
        lets its epochs grow into the time budget (no study setting: a sampled trial keeps the
        study's ``training.epochs``)."""
        t = config.training
        choices = choices or {}
        portfolio = portfolio or {}
        study_sets = t.model_fields_set

        def chosen(name: str) -> Any:
            value = getattr(t, name)
            if f"train.{name}" in choices:
                return choices[f"train.{name}"]
            if name in portfolio and name not in study_sets:
                return portfolio[name]
            return getattr(cls, name) if isinstance(value, Range) else _fixed(value)

        clip = chosen("clip_grad_norm")
        return cls(
            epochs=max(t.epochs, int(portfolio.get("epochs") or 0)),
            batch_size=batch_size,
            lr=lr,
            optimizer=chosen("optimizer"),
            scheduler=t.scheduler,
            augment=chosen("augment"),
            loss=t.loss,
            eval_batch_size=t.eval_batch_size,
            precision=t.precision,
            data_placement=t.data_placement,
            loader_workers=t.loader_workers,
            compile=t.compile,
            feature_cache=t.feature_cache,
            augment_frozen=t.augment_frozen,
            warmup=float(chosen("warmup")),
            clip_grad_norm=None if clip is None else float(clip),
            randaugment_magnitude=int(chosen("randaugment_magnitude")),
            random_erasing=float(chosen("random_erasing")),
            ema=chosen("ema"),
            metric=config.metric,
            top_k=config.search.top_k,
            # the kept epoch is the best by the study's metric (a cost objective cannot pick it)
            select_metric=config.metric if config.metric in METRICS[config.task] else None,
            patience=t.patience,
            budget_share=portfolio.get("budget_share"),
        )
