"""Running a study: config → plugins → Optuna study in its storage → trials → (export).

``run_study`` is what ``tlsearch run`` calls. Running it again on the same folder resumes: the
study is loaded from its storage and only the trials still missing from the budget run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from tlsearch.config import StudyConfig, load_config, resolve_space
from tlsearch.data import load_splits
from tlsearch.registry import PluginManager, get_plugin_manager
from tlsearch.search.objective import Objective, StudyData
from tlsearch.search.study_dir import StudyDir

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def make_sampler(config: StudyConfig, *, offset: int = 0) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, grouped: plugin-specific parameters only exist when their plugin is chosen)
    or random. ``offset`` shifts the seed on resume so a resumed study does not replay its first samples."""
    seed = None if config.search.seed is None else config.search.seed + offset
    if config.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    n_startup = max(2, min(10, (config.search.n_trials or 20) // 3))
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=n_startup)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    epochs = config.training.epochs
    kind = config.search.pruner
    if kind == "none" or epochs < 2:
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)


def open_study(config: StudyConfig, storage: str, *, create: bool = True) -> optuna.Study:
    """Create the study in ``storage`` or load it if it exists (this is what makes reruns resume)."""
    existing = 0
    try:
        summaries = optuna.get_all_study_summaries(storage)
        existing = next((s.n_trials for s in summaries if s.study_name == config.name), 0)
    except Exception:
        existing = 0
    kwargs: dict[str, Any] = {
        "study_name": config.name, "storage": storage,
        "sampler": make_sampler(config, offset=existing), "pruner": make_pruner(config),
    }
    if create:
        return optuna.create_study(direction=config.direction, load_if_exists=True, **kwargs)
    return optuna.load_study(**kwargs)


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


@dataclass
class RunResult:
    study: optuna.Study
    study_dir: StudyDir
    config: StudyConfig
    pm: PluginManager
    data: StudyData


def prepare(config_or_path: StudyConfig | str | Path, *, out_dir: str | Path | None = None,
            plugin_files: Sequence[str | Path] = (), overrides: dict[str, Any] | None = None,
            ) -> tuple[StudyConfig, PluginManager, Any, StudyDir]:
    """Validate everything a run needs — config, plugins, search space — before any work starts."""
    config = config_or_path if isinstance(config_or_path, StudyConfig) else load_config(config_or_path, overrides=overrides)
    pm = get_plugin_manager([*(config.resolve_path(p) for p in config.plugins), *plugin_files])
    space = resolve_space(config, pm.registry)
    study_dir = StudyDir(Path(out_dir) if out_dir is not None else Path("runs") / config.name)
    return config, pm, space, study_dir


def run_study(
    config_or_path: StudyConfig | str | Path,
    *,
    out_dir: str | Path | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    plugin_files: Sequence[str | Path] = (),
    progress: bool = True,
    on_event: Callable[..., None] | None = None,
) -> RunResult:
    """Run (or resume) a study until its budget of finished trials is reached.

    ``n_trials`` is the study's total budget of finished (complete or pruned) trials, across reruns
    and workers: a rerun after a crash runs only the missing ones. Failed trials are recorded and the
    study goes on.
    """
    config, pm, space, study_dir = prepare(config_or_path, out_dir=out_dir, plugin_files=plugin_files)
    train, val = load_splits(config.data, task=config.task, seed=config.search.seed or 0, resolve=config.resolve_path)
    data = StudyData(train, val, cache_dir=study_dir.cache, on_bad_image=config.data.on_bad_image, progress=progress)

    study_dir.save_config(config)
    study = open_study(config, study_dir.storage(config, storage))
    study.set_metric_names([config.metric])
    study.set_user_attr("task", config.task)
    study.set_user_attr("metric", config.metric)
    if data.labels is not None:
        study.set_user_attr("labels", data.labels)
    objective = Objective(config=config, space=space, pm=pm, data=data, study_dir=study_dir, on_event=on_event)
    pm.notify("tlsearch_study_start", study=study, config=config, out_dir=str(study_dir.root))

    budget = n_trials if n_trials is not None else config.search.n_trials
    remaining = None if budget is None else max(0, budget - finished_trials(study))
    callbacks = []
    if budget is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(budget, states=FINISHED))
    if remaining != 0:
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=timeout if timeout is not None else config.search.timeout,
            catch=(Exception,),
            callbacks=callbacks,
            gc_after_trial=True,
            show_progress_bar=False,
        )
    pm.notify("tlsearch_study_end", study=study, out_dir=str(study_dir.root))
    return RunResult(study, study_dir, config, pm, data)
