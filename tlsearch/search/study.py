"""Running a study: config → plugins → Optuna study in its storage → trials → (export).

``run_study`` is what :meth:`tlsearch.Study.run` (and so ``tlsearch run``) and
:meth:`tlsearch.Worker.run` call. Running it again on the same folder resumes: the
study is loaded from its storage and only the trials still missing from the budget run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from tlsearch.config import ResolvedSpace, StudyConfig, load_config, resolve_space
from tlsearch.data import load_splits
from tlsearch.data.sizes import MIN_DEFAULT_SIZE, SIZE_STEP, median_short_side
from tlsearch.errors import ConfigError, PluginError, TlsearchError, storage_unavailable
from tlsearch.rank.study import ranked_space
from tlsearch.registry import PluginManager, get_plugin_manager
from tlsearch.search.baseline import MAJORITY_ATTR, majority_class
from tlsearch.search.budget import DEADLINE_ATTR, FINISHED, BudgetCallback, should_stop
from tlsearch.search.decision import check_decision_settings
from tlsearch.search.failures import FailurePolicy
from tlsearch.search.objective import Objective
from tlsearch.search.objectives import sampler_constraints_func
from tlsearch.search.portfolio import warm_start
from tlsearch.search.pruning import CostAwarePruner, WarmStartGrace
from tlsearch.search.recovery import requeue_after_heartbeat, sweep_stale_trials
from tlsearch.search.storage import check_concurrency, make_storage, storage_kind
from tlsearch.search.study_data import StudyData
from tlsearch.search.study_dir import StudyDir
from tlsearch.search.workers import RANK_ENV, run_workers
from tlsearch.train import resolve_device, resolve_precision
from tlsearch.train.distributed import check_devices
from tlsearch.train.threads import apply_threads
from tlsearch.worker_settings import GRACE_PERIOD, HEARTBEAT_INTERVAL, WorkerSettings

log = logging.getLogger("tlsearch")


def make_sampler(config: StudyConfig, *, offset: int = 0) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, grouped: plugin-specific parameters only exist when their plugin is chosen)
    or random. ``offset`` shifts the seed on resume so a resumed study does not replay its first samples."""
    seed = None if config.search.seed is None else config.search.seed + offset
    if config.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    n_startup = max(2, min(10, (config.search.n_trials or 20) // 3))
    constraints = sampler_constraints_func(config)  # see search/objectives.py
    with warnings.catch_warnings():  # multivariate/group are "experimental" since Optuna 2.x; we rely on them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, n_startup_trials=n_startup, constraints_func=constraints
        )


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """Epochs are the budget (a trial reports its metric at step = epoch index 0, 1, …). ``median``
    stops a trial below the median of earlier trials from its first epoch on (warm-start trials
    from their third: :class:`~tlsearch.search.pruning.WarmStartGrace`); ``successive_halving``
    and ``hyperband`` (reduction factor 3) keep the best third at each rung, the first rung after
    the second epoch; ``successive_halving`` is cost-aware (:class:`~tlsearch.search.pruning.CostAwarePruner`:
    it lets trials whose epochs cost little *work* finish, and warm-start trials their first
    two epochs, after which they are stopped like any other). Multi-objective studies are
    never pruned (Optuna's pruners are single-objective)."""
    epochs = config.training.epochs
    kind = config.search.pruner
    if kind == "none" or epochs < 2 or config.multi_objective:
        return optuna.pruners.NopPruner()
    if kind == "median":
        return WarmStartGrace(optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return CostAwarePruner(
        optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3, min_early_stopping_rate=0),
        ratio=3.0,
    )


def open_study(
    config: StudyConfig,
    storage: str | BaseStorage,
    *,
    create: bool = True,
    worker: int = 0,
    heartbeat_interval: int | None = HEARTBEAT_INTERVAL,
    grace_period: int | None = GRACE_PERIOD,
) -> optuna.Study:
    """Create the study in ``storage`` or load it if it exists (this is what makes reruns resume).

    ``storage`` is a URL or journal path (see :func:`tlsearch.search.storage.make_storage`) or an
    Optuna storage. ``worker`` (0, 1, …) shifts the sampler's seed, so that workers started
    together do not all sample the same first trials; the number of trials already in the study
    shifts it too, so that a resumed study does not replay its first samples."""
    if isinstance(storage, str):
        storage = make_storage(
            storage,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            on_stale=requeue_after_heartbeat,
        )
    existing = 0
    try:
        existing = storage.get_n_trials(storage.get_study_id_from_name(config.name))
    except KeyError:
        if not create:
            raise TlsearchError(
                f"no study {config.name!r} in storage {storage!r}; start it with `tlsearch run`"
            ) from None
    kwargs: dict[str, Any] = {
        "study_name": config.name,
        "storage": storage,
        "sampler": make_sampler(config, offset=existing + 7919 * worker),
        "pruner": make_pruner(config),
    }
    if create:
        return optuna.create_study(directions=config.directions, load_if_exists=True, **kwargs)  # type: ignore[arg-type]
    return optuna.load_study(**kwargs)


def with_data_size(space: ResolvedSpace, config: StudyConfig, data: StudyData) -> ResolvedSpace:
    """``space`` with the training images' median shorter side when the study sets no
    ``image_size`` (neither ``data.image_size`` nor a backbone's own): each trial then trains at the
    data-derived default size (:mod:`tlsearch.data.sizes`), recorded as its ``data.image_size``."""
    if config.data.image_size is not None or all(c.image_size is not None for c in space.backbone):
        return space
    side = median_short_side(data.train.paths)
    if side is not None:
        log.info(
            "data.image_size not set: the training images' median shorter side is %d px, so each "
            "backbone trains at max(%d, that rounded up to a multiple of %d) px, at most its native size",
            side,
            MIN_DEFAULT_SIZE,
            SIZE_STEP,
        )
    return dataclasses.replace(space, data_short_side=side)


def _describe_study(study: optuna.Study, config: StudyConfig, data: StudyData) -> None:
    """The study's own attributes, written only when missing or different: many workers load the
    same study at once, and a write that changes nothing is a write that can collide."""
    if study.metric_names != config.objectives:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(config.objectives)
    wanted: dict[str, Any] = {"task": config.task, "metric": config.metric}
    if data.labels is not None:
        wanted["labels"] = data.labels
    majority = majority_class(data.val)  # the trivial baseline (tlsearch.search.baseline)
    if majority is not None:
        wanted[MAJORITY_ATTR] = list(majority)
    current = study.user_attrs
    for key, value in wanted.items():
        if current.get(key) != value:
            study.set_user_attr(key, value)


def _progress_events(on_event: Callable[..., None]) -> Callable[[str, int, int], None]:
    """Work outside trials (decoding, ranking) as ``progress`` events: ``task``, ``done``, ``total``."""

    def report(task: str, done: int, total: int) -> None:
        on_event("progress", task=task, done=done, total=total)

    return report


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


@dataclass
class RunResult:
    study: optuna.Study
    study_dir: StudyDir
    config: StudyConfig
    pm: PluginManager
    data: StudyData
    stopped: str | None = None  # why the failure policy stopped this worker (None: it did not)
    exported: Any = None  # what :meth:`tlsearch.Study.run` exported afterwards (a BestExport), if anything

    def problem(self) -> str | None:
        """One line saying why this run did not succeed, or None when it did: the failure policy
        stopped it (a study-wide failure, or too many failures in a row), or the study has no
        complete trial (every trial failed or was pruned, or the budget ended first). The CLI exits
        1 with this line."""
        if self.stopped:
            return self.stopped
        if not self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            failed = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
            last = next((t for t in reversed(failed) if t.user_attrs.get("failure")), None)
            detail = f" (the last failure: {last.user_attrs['failure']})" if last is not None else ""
            return f"the run ended with no complete trial{detail}"
        return None


def prepare(
    config_or_path: StudyConfig | str | Path,
    *,
    out_dir: str | Path | None = None,
    plugin_files: Sequence[str | Path] = (),
    overrides: dict[str, Any] | None = None,
    artifacts: str | None = None,
) -> tuple[StudyConfig, PluginManager, Any, StudyDir]:
    """Validate everything a run needs — config, plugins, search space — before any work starts."""
    config = (
        config_or_path
        if isinstance(config_or_path, StudyConfig)
        else load_config(config_or_path, overrides=overrides)
    )
    try:  # a device this machine lacks, or a precision it cannot run, fails now rather than in every trial
        device = resolve_device(config.training.device)
        resolve_precision(config.training.precision, device)
        check_devices(config.training.devices, device)  # training.devices this machine can give
    except ConfigError as exc:
        raise ConfigError(f"{config.source or '<study>'}: {exc}") from None
    # ``--plugin`` files join the study's own ``plugins`` (absolute paths, once each), so study.json
    # records them and ``tlsearch export DIR`` or ``tlsearch worker DIR`` load them again.
    files = list(dict.fromkeys(config.resolve_path(p).resolve() for p in [*config.plugins, *plugin_files]))
    if files != [config.resolve_path(p) for p in config.plugins]:
        config = config.model_copy(update={"plugins": files})
    pm = get_plugin_manager(files)
    space = resolve_space(config, pm.registry)
    root = Path(out_dir) if out_dir is not None else Path("runs") / config.name
    study_dir = StudyDir.of(root, config, artifacts)  # ``artifacts`` (--artifacts) over the study's own
    return config, pm, space, study_dir


def check_available(config: StudyConfig, space: Any, registry: Any) -> None:
    """Each plugin of the space checks what its trials will fetch (``check_available``, e.g. hub
    weights), once: a :class:`~tlsearch.errors.PluginError` stops the run before any work."""
    for section in ("backbone", "head", "freezing", "regularizers"):
        for choice in getattr(space, section):
            check = getattr(registry.get(choice.kind, choice.name).cls, "check_available", None)
            if check is None:
                continue
            try:
                check(choice.space.params)
            except PluginError as exc:
                where = f"{config.source or '<study>'}: space.{section}.{choice.name}"
                raise PluginError(f"{where}: {exc}") from None


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
    settings: WorkerSettings | None = None,
    artifacts: str | None = None,
) -> RunResult:
    """Run (or resume) a study until its budget of finished trials is reached.

    ``n_trials`` is the study's total budget of finished (complete or pruned) trials, across reruns
    and workers: exactly that many finish (see :mod:`tlsearch.search.budget`), and a rerun after a
    crash runs only the missing ones, after failing and requeueing the trials of dead workers
    (:mod:`tlsearch.search.recovery`). Failed trials are recorded and the study goes on; a worker
    stops at the first failure every trial would meet, or after ``settings.max_failures_in_a_row``
    failures in a row (:class:`~tlsearch.search.failures.FailurePolicy`; ``RunResult.stopped`` says which).

    ``on_event(name, **kw)`` receives the search's events: ``trial_start``, ``epoch_end`` and
    ``trial_end`` (each with its ``trial``), and ``progress`` (``task``, ``done``, ``total``) for
    the work before and between trials (decoding images, ranking backbones); with it, decoding
    shows no tqdm bar of its own.

    ``settings`` (:class:`~tlsearch.worker_settings.WorkerSettings`) says how this process takes
    part. ``settings.workers == 0`` only prepares the study: it validates it, checks its images,
    creates it in the storage with its deadline, ranking and warm start, and runs no trial;
    ``tlsearch worker`` processes started afterwards (anywhere the storage reaches) do the trials.
    It is the creator step of a cluster launch (``docs/distributed.md``): workers join a study, so
    without it the warm start and the study's deadline would not be set. ``settings.workers`` > 1
    starts that many local worker processes (one per visible GPU, or CPU processes; see
    :mod:`tlsearch.search.workers`) and waits for them; ``on_event`` then receives their progress,
    read from the study, and their output goes to ``logs/`` in the study folder.
    ``settings.join`` is what ``tlsearch worker`` does: take part in a study someone else may be
    running, without resetting the study's deadline (``timeout`` then limits this worker only).

    ``artifacts`` (default: the study's ``artifacts:``, else the study folder) is the artefact
    store the checkpoints, ``study.json``, the trail and the exported model are shared through
    (:mod:`tlsearch.artifacts`); it is probed before any image is read.
    """
    settings = settings or WorkerSettings()
    heartbeat_interval, grace_period = settings.heartbeat_interval, settings.grace_period
    config, pm, space, study_dir = prepare(
        config_or_path, out_dir=out_dir, plugin_files=plugin_files, artifacts=artifacts
    )
    spec = study_dir.storage(config, storage)
    check_concurrency(spec, settings.workers)
    check_available(config, space, pm.registry)  # hub weights offline: one message, not 10 trials' retries
    threads = apply_threads(config.training.threads)  # from the cores free now, before decoding
    if threads is not None:
        log.info("%s", threads.describe())
    rank = settings.rank if settings.rank is not None else int(os.environ.get(RANK_ENV, "0"))
    # A database server is reached before any image is read, so that one that does not answer
    # leaves nothing behind (not even the image check's cache); a file storage (the journal, by
    # default inside the study folder, or SQLite) is created only once the images passed their
    # check, so that a bad image leaves no study in the folder.
    opened: str | BaseStorage = spec
    if storage_kind(spec) in ("rdb", "grpc"):
        opened = make_storage(
            spec,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            on_stale=requeue_after_heartbeat,
        )
    study_dir.probe_artifacts()  # an artefact store that does not answer or take writes: exit 2 now
    train, val = load_splits(
        config.data, task=config.task, seed=config.search.seed or 0, resolve=config.resolve_path
    )
    check_decision_settings(config, train)  # a binary threshold's target needs two classes
    report = None if on_event is None else _progress_events(on_event)
    data = StudyData(
        train,
        val,
        cache_dir=study_dir.cache,
        on_bad_image=config.data.on_bad_image,
        progress=progress,
        on_progress=report,
    )
    data.check()  # every image decoded once, before any trial: a bad file stops the study once
    space = with_data_size(space, config, data)

    study = open_study(
        config, opened, worker=rank, heartbeat_interval=heartbeat_interval, grace_period=grace_period
    )
    study_dir.save_config(config)  # only once the storage answered: a bad one leaves nothing behind
    _describe_study(study, config, data)
    budget = n_trials if n_trials is not None else config.search.n_trials
    timeout = timeout if timeout is not None else config.search.timeout
    if not settings.join:
        deadline = None if timeout is None else time.time() + timeout
        if study.user_attrs.get(DEADLINE_ATTR) != deadline:
            study.set_user_attr(DEADLINE_ATTR, deadline)
    swept = sweep_stale_trials(study, grace_period=grace_period)
    if swept:
        log.warning("trial(s) %s were left RUNNING by a worker that is gone: failed and requeued", swept)
    space, ranking = ranked_space(
        study,
        config=config,
        space=space,
        registry=pm.registry,
        data=data,
        cache_dir=study_dir.cache,
        device=resolve_device(config.training.device),
        on_progress=report,
    )
    if not settings.join:
        warm_start(study, config=config, space=space, ranking=ranking)
    result = RunResult(study, study_dir, config, pm, data)
    if settings.workers == 0:
        return result
    if settings.workers > 1:
        try:
            run_workers(
                result,
                storage=spec,
                settings=settings,
                n_trials=n_trials,
                on_event=on_event,
                artifacts=artifacts,
            )
        finally:  # a worker killed after the stop deadline left its trial RUNNING: fail and requeue it now
            sweep_stale_trials(study, grace_period=grace_period)
        return result

    objective = Objective(
        config=config,
        space=space,
        pm=pm,
        data=data,
        study_dir=study_dir,
        on_event=on_event,
        budget=budget,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        deadline=None if timeout is None else time.time() + timeout,  # this worker's (join: its own)
    )
    policy = FailurePolicy(settings.max_failures_in_a_row)
    pm.notify("tlsearch_study_start", study=study, config=config, out_dir=str(study_dir.root))
    try:
        try:
            if not should_stop(study, budget):
                study.optimize(
                    objective,
                    timeout=timeout,
                    catch=(Exception,),
                    callbacks=[BudgetCallback(budget), policy],
                    gc_after_trial=True,
                    show_progress_bar=False,
                )
        except Exception as exc:  # the storage proxy gone: Optuna's own writes after the trial fail too
            lost = objective.storage_lost or storage_unavailable(exc)
            if lost is not None:
                raise lost from None
            raise
        if objective.storage_lost is not None:  # the worker stops, exit 1, with the reason
            raise objective.storage_lost
        if objective.disk_full is not None:  # one clear line, not "N failed trials in a row"
            raise objective.disk_full
    finally:
        pm.notify("tlsearch_study_end", study=study, out_dir=str(study_dir.root))
        study_dir.share_trail()
    result.stopped = policy.stopped
    return result
