"""The Optuna objective: one trial = sample plugins → build → fine-tune → record → checkpoint."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from tlsearch.config import ResolvedSpace, StudyConfig
from tlsearch.errors import (
    StorageUnavailable,
    TlsearchError,
    WriteError,
    disk_full_error,
    storage_unavailable,
)
from tlsearch.registry import PluginManager
from tlsearch.search.budget import FINISHED, SKIPPED_ATTR, BudgetReached, study_deadline, wait_for_slot
from tlsearch.search.checkpoint import TrialRecord, save_checkpoint
from tlsearch.search.class_attrs import class_attrs
from tlsearch.search.failures import (
    SCOPE_ATTR,
    TRACEBACK_ATTR,
    blame_non_finite,
    classify,
    free_accelerator_memory,
    instantiate_plugins,
    short_traceback,
    study_wide,
)
from tlsearch.search.objectives import LATENCY_ATTR, latency_needed, objective_values, record_constraints
from tlsearch.search.portfolio import TRAINING_ATTR
from tlsearch.search.pruning import WORK_ATTR
from tlsearch.search.recovery import (
    MAX_RETRIES,
    SEED_ATTR,
    WORKER_ATTR,
    TrialHeartbeat,
    WorkerIdentity,
    requeue,
    sweep_stale_trials,
)
from tlsearch.search.sampling import (
    TrialPlugins,
    backbone_model,
    build_model,
    data_choices,
    sample_choices,
)
from tlsearch.search.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL
from tlsearch.search.study_data import StudyData
from tlsearch.search.study_dir import StudyDir
from tlsearch.search.trial_writes import PROGRESS_INTERVAL, TrialWriter
from tlsearch.train import NonFiniteError, StopTraining, Trainer, TrainSettings, merge_options, resolve_device
from tlsearch.train.distributed import fit_on_devices
from tlsearch.train.features import trial_backbone_identity
from tlsearch.train.latency import LatencyCache
from tlsearch.train.metrics import per_class_rows
from tlsearch.train.work import epoch_work

log = logging.getLogger("tlsearch")
STOP_REASONS = {
    "timeout": "cut by the timeout",
    "patience": "no improvement: patience",
    "converged": "the solved probe converged",
}


def wall_clock() -> float:
    """The time the study's deadline is compared with, at each epoch boundary (a seam for tests)."""
    return time.time()


class TrialFailed(TlsearchError):
    """Ends a failed trial after its reason was recorded (raised without the original traceback,
    so nothing of the failed step stays referenced)."""


def _fixed(value: Any) -> Any:
    """A study's fixed setting; a searched one (a list) that a trial lacks takes its first value."""
    return value[0] if isinstance(value, list) else value


def trial_batch_size(config: StudyConfig, trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The batch size a trial trains with: an out-of-memory retry's (half), else the sampled
    ``train.batch_size``, else the study's."""
    choices = trial.user_attrs.get("choices") or {}
    sampled = trial.params.get("train.batch_size", choices.get("train.batch_size"))
    default = _fixed(config.training.batch_size) if sampled is None else sampled
    return int(trial.user_attrs.get("batch_size", default))


class Objective:
    """Callable for ``study.optimize``. Every trial records as user attributes: ``choices``,
    ``plugins``, ``history`` (per-epoch metrics), ``metrics``, ``seconds``, ``params`` (parameter
    count of the whole model), ``trainable_params``, ``backbone`` (the backbone's facts: model,
    weights, cost), ``gflops``, ``feature_cache``, ``speed`` (data placement, compile decision,
    feature-cache hit, per-epoch timing), ``latency_ms`` (only when an objective or constraint reads
    it, :mod:`tlsearch.train.latency`), ``ema`` (with ``training.ema``: whether
    the checkpoint holds the weights' moving average), ``worker`` (who ran it), ``work`` (GFLOP of the epochs so far and their count,
    :mod:`tlsearch.train.work`), ``best_epoch``
    (the epoch whose weights and metrics the trial keeps, 0-based), ``epochs_run``, ``stopped``
    (``patience``, ``converged`` or ``timeout`` when training ended early, the trial still complete),
    ``epochs_planned`` (when the time budget re-planned its epochs, down or up), and, when it
    fails, ``failure`` (the reason) and ``failure_kind`` (see :mod:`tlsearch.search.failures`).

    ``deadline`` (a ``time.time()`` value; the study's ``deadline`` user attribute too, when set):
    checked at every epoch boundary; a trial still training then ends after that epoch as
    COMPLETE with its best epoch kept and ``stopped: timeout``.

    Storage writes are grouped (:class:`~tlsearch.search.trial_writes.TrialWriter`): the worker record,
    then the sampled parameters with ``choices``, the per-epoch history and intermediate values (at
    most every ``progress_interval`` seconds), and the final attributes, each in one commit.

    Before a trial trains it sweeps the study for trials of dead workers
    (:mod:`tlsearch.search.recovery`) and, when ``budget`` is set, takes a slot of the global
    budget (:mod:`tlsearch.search.budget`). A failed trial never stops the study: CUDA
    out-of-memory frees the memory and requeues the parameters once at half the batch size
    (unless the study's ``training.retry_oom`` is false),
    non-finite results, plugin errors and unreadable images are recorded, and Ctrl-C requeues the
    interrupted parameters so that a rerun picks them up."""

    def __init__(
        self,
        *,
        config: StudyConfig,
        space: ResolvedSpace,
        pm: PluginManager,
        data: StudyData,
        study_dir: StudyDir,
        on_event: Any = None,
        budget: int | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        grace_period: float = GRACE_PERIOD,
        max_retries: int = MAX_RETRIES,
        progress_interval: float = PROGRESS_INTERVAL,
        deadline: float | None = None,
    ) -> None:
        self.config = config
        self.deadline = deadline
        self.space = space
        self.pm = pm
        self.data = data
        self.study_dir = study_dir
        self.device = resolve_device(config.training.device)
        self.on_event = on_event or (lambda *a, **k: None)
        self.budget = budget
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.max_retries = max_retries
        self.progress_interval = progress_interval
        self.identity = WorkerIdentity.current().to_dict()
        self._plugins: TrialPlugins | None = None  # this trial's, to name a plugin behind a failure
        #: set when a write to the storage met a full disk (the database server's, most often):
        #: the study is stopped and ``run_study`` raises it, instead of failing trial after trial
        self.disk_full: WriteError | None = None
        #: set when the storage (the gRPC proxy) stayed away past its retry window: the trial failed
        #: (recorded if the storage answered that last write), the study is stopped, and
        #: ``run_study`` raises it (exit 1); a worker started once it is back resumes the study
        self.storage_lost: StorageUnavailable | None = None

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        try:
            return self._call(trial)
        except Exception as exc:  # a storage write that met a full disk: no later trial can be recorded
            self.disk_full = disk_full_error(exc)
            self.storage_lost = storage_unavailable(exc)
            if self.disk_full is not None or self.storage_lost is not None:
                trial.study.stop()
            raise

    def _call(self, trial: optuna.Trial) -> float | list[float]:
        # A write of its own: other workers' sweeps must know who runs the trial while it waits for a slot.
        trial.set_user_attr(WORKER_ATTR, self.identity)
        writer = TrialWriter(trial, interval=self.progress_interval)
        with TrialHeartbeat(trial.study, trial._trial_id, interval=self.heartbeat_interval):
            try:
                self._take_slot(trial, writer)
                return self._trial(trial, writer)
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see tlsearch.search.signals)
                reason = classify(exc)[1]
                self._fail(writer, "interrupted", reason)
                if trial.params:
                    requeue(trial.study, trial, reason="interrupted", max_retries=self.max_retries)
                    self._end(trial, "FAIL", None, {"failure": reason})  # type: ignore[dict-item]
                raise

    def _take_slot(self, trial: optuna.Trial, writer: TrialWriter) -> None:
        study = trial.study
        # One read serves the sweep (the RUNNING trials) and the budget's first check (all counted).
        trials = study._storage.get_all_trials(
            study._study_id, deepcopy=False, states=(TrialState.RUNNING, *FINISHED)
        )
        swept = sweep_stale_trials(
            study,
            grace_period=self.grace_period,
            max_retries=self.max_retries,
            running=[t for t in trials if t.state == TrialState.RUNNING],
            heartbeats_checked=True,  # study.optimize failed the heartbeat-stale trials just now
        )
        if swept:
            log.warning("failed and requeued trial(s) %s: their worker is gone", swept)
        if self.budget is None:
            return
        try:
            wait_for_slot(
                study,
                trial,
                budget=self.budget,
                deadline=lambda: study_deadline(study),
                trials=[t for t in trials if t.number not in swept],
            )
        except BudgetReached as exc:
            writer.stage(**{SKIPPED_ATTR: True})
            self._fail(writer, "skipped", f"skipped: {exc}")
            trial.study.stop()
            raise TrialFailed(str(exc)) from None

    def _trial(self, trial: optuna.Trial, writer: TrialWriter) -> float | list[float]:
        started = time.perf_counter()
        out = str(self.study_dir.root)
        with writer.sampling():
            choices = sample_choices(trial, self.space)
        # A requeued trial (Ctrl-C, a lost worker) carries its seed: same parameters, same training.
        seed = trial.user_attrs.get(SEED_ATTR, (self.config.search.seed or 0) + trial.number)
        # with the choices: the concrete model behind the plugin (resnet18 under `backbone: timm`), for dashboards
        writer.flush(backbone_model=backbone_model(choices), choices=choices, **{SEED_ATTR: int(seed)})
        history: list[dict[str, float]] = []
        try:
            # Observer hooks cannot fail a trial by accident; FailTrial and TrialPruned do it on purpose.
            self.pm.notify(
                "tlsearch_trial_start", may_end_trial=True, trial=trial, choices=choices, out_dir=out
            )
            self.on_event("trial_start", trial=trial, choices=choices)
            value = self._run(trial, writer, choices, history, started)
            score = value if isinstance(value, float) else value[0]
            kept = trial.user_attrs.get("metrics") or history[-1]  # the best epoch's
            self._end(trial, "COMPLETE", score, kept, may_end_trial=True)
        except optuna.TrialPruned:
            writer.flush()
            self._end(trial, "PRUNED", None, history[-1] if history else {})
            raise
        except (Exception, SystemExit) as exc:  # sys.exit in a plugin fails the trial, not the process
            if isinstance(exc, NonFiniteError):
                exc = blame_non_finite(exc, self._plugins)
            kind, reason = classify(exc)
            lost = storage_unavailable(exc) is not None
            failure_attrs: dict[str, Any] = {TRACEBACK_ATTR: short_traceback(exc)}
            if study_wide(exc, self.space):
                failure_attrs[SCOPE_ATTR] = "study"
        else:
            return value
        # Outside the except block: the exception and its traceback (holding the failed step's
        # tensors) are gone, so the memory can really be freed.
        free_accelerator_memory()
        self._fail(writer, kind, reason, **failure_attrs)
        self._end(trial, "FAIL", None, {"failure": reason})  # type: ignore[dict-item]
        if kind == "oom":
            self._retry_smaller(trial)
        if lost:  # recorded, the proxy being back for that write; the worker stops all the same
            raise StorageUnavailable(reason)
        raise TrialFailed(reason)

    def _fail(self, writer: TrialWriter, kind: str, reason: str, **attrs: Any) -> None:
        """Record why the trial failed (and ``attrs``: its traceback, its scope), with anything
        still staged, in one commit."""
        writer.flush(failure=reason, failure_kind=kind, **attrs)

    def _retry_smaller(self, trial: optuna.Trial) -> None:
        batch = trial_batch_size(self.config, trial)
        if self.config.training.retry_oom and batch > 1 and not trial.user_attrs.get("oom_retry"):
            requeue(
                trial.study,
                trial,
                reason=f"out of memory at batch size {batch}",
                max_retries=self.max_retries,
                overrides={"batch_size": batch // 2, "oom_retry": True},
            )

    def _end(
        self,
        trial: optuna.Trial,
        state: str,
        value: float | None,
        metrics: dict[str, float],
        *,
        may_end_trial: bool = False,
    ) -> None:
        self.pm.notify(
            "tlsearch_trial_end",
            may_end_trial=may_end_trial,
            trial=trial,
            state=state,
            value=value,
            metrics=metrics,
            out_dir=str(self.study_dir.root),
        )
        self.on_event("trial_end", trial=trial, state=state, value=value, metrics=metrics)

    def epoch_callback(
        self,
        trial: optuna.Trial,
        writer: TrialWriter,
        history: list[dict[str, float]],
        *,
        epochs: int | Callable[[], int] | None = None,
    ) -> Callable[[int, dict[str, float]], None]:
        """What happens after each epoch: record the history and report to the pruner (one commit,
        at most every ``progress_interval`` seconds), call the ``tlsearch_epoch_end`` hooks, stop
        the trial when the pruner says so, and end its training (keeping its best epoch) when the
        study's deadline has passed. ``epochs``: the trial's (a warm-start entry may raise the
        study's ``training.epochs``), or what returns its current plan (the trainer's
        ``planned_epochs``: a time budget re-plans it, down or, for a warm-start fine-tune, up), so
        that only the planned last epoch is spared the pruner. The ``epoch_end`` event carries the
        plan (``epochs``: the live view's epochs of the trial)."""
        config = self.config
        given = config.training.epochs if epochs is None else epochs
        metric = config.metric
        deadline = self._deadline(trial)
        staged: dict[str, int] = {}  # the plan last recorded (the first epoch's: the recipe's)

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            epochs = given() if callable(given) else given
            history.append(metrics)
            if not config.multi_objective:  # Optuna cannot prune multi-objective trials
                writer.report(metrics[metric], epoch)
            writer.progress(history=history)
            self.pm.notify(
                "tlsearch_epoch_end",
                may_end_trial=True,
                trial=trial,
                epoch=epoch,
                metrics=metrics,
                out_dir=str(self.study_dir.root),
            )
            if epochs != staged.setdefault("epochs", epochs):  # re-planned by the budget: recorded
                staged["epochs"] = epochs
                writer.stage(epochs_planned=epochs)
            self.on_event("epoch_end", trial=trial, epoch=epoch, metrics=metrics, epochs=epochs)
            last = epoch + 1 >= epochs
            if not last and not config.multi_objective and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with {metric}={metrics[metric]:.4g}")
            if not last and deadline is not None and wall_clock() >= deadline:
                raise StopTraining("timeout", f"cut by the study's timeout after epoch {epoch}")

        return on_epoch_end

    def _deadline(self, trial: optuna.Trial) -> float | None:
        deadlines = [d for d in (self.deadline, study_deadline(trial.study)) if d is not None]
        return min(deadlines, default=None)

    def epochs_fitter(self, trial: optuna.Trial) -> Callable[[int, float], int | None] | None:
        """The study's budget rule for a trial's epochs (:meth:`Trainer.fit`'s ``fit_epochs``):
        after epoch ``epoch``, the epochs in all that fit before the deadline at ``seconds`` per
        epoch; None when the study has no deadline."""
        deadline = self._deadline(trial)
        if deadline is None:
            return None

        def fit_epochs(epoch: int, seconds: float) -> int | None:
            if seconds <= 0:
                return None
            return epoch + 1 + int(max(0.0, deadline - wall_clock()) // seconds)

        return fit_epochs

    def record_finished(
        self,
        trial: optuna.Trial,
        writer: TrialWriter,
        *,
        metrics: dict[str, float],
        started: float,
        speed: dict[str, Any],
        backbone: dict[str, Any],
        info: dict[str, Any],
    ) -> None:
        """Record a trial that trained to its end: its final user attributes (``metrics``,
        ``seconds``, ``speed``, ``backbone`` and ``info``: params, trainable_params, feature_cache,
        precision, device, latency_ms, gflops), with the history still staged, in one commit; then
        the constraint values of a constrained study."""
        writer.flush(
            metrics=metrics,
            seconds=time.perf_counter() - started,
            speed=speed,
            backbone=backbone,
            **info,
        )
        record_constraints(trial, self.config, info)

    def _run(
        self,
        trial: optuna.Trial,
        writer: TrialWriter,
        choices: dict[str, Any],
        history: list[dict[str, float]],
        started: float,
    ) -> float | list[float]:
        config = self.config
        self._plugins = None
        plugins = self._plugins = instantiate_plugins(choices, self.pm.registry)
        writer.stage(plugins=plugins.names())
        seed = int(trial.user_attrs[SEED_ATTR])
        model = build_model(
            plugins,
            num_outputs=self.data.num_outputs,
            **data_choices(choices, config.data),
            backbone_seed=config.search.seed or 0,
            head_seed=seed,
        )
        train, val = self.data.decoded(model.data_config)
        skipped = len(train.skipped) + len(val.skipped)
        if skipped:
            writer.stage(skipped_images=skipped)
            examples = [path for path, _ in (train.skipped + val.skipped)[:5]]
            trial.study.set_user_attr("skipped_images", {"count": skipped, "examples": examples})
        batch_size = trial_batch_size(config, trial)
        target_scale = self.data.target_scale
        settings = TrainSettings.for_trial(
            config,
            batch_size=batch_size,
            lr=choices["train.lr"],
            choices=choices,
            portfolio=trial.user_attrs.get(TRAINING_ATTR),
        )
        trainer = Trainer(
            model,
            strategy=plugins.freezing,
            regularizers=plugins.regularizers,
            task=config.task,
            num_outputs=self.data.num_outputs,
            settings=settings,
            device=self.device,
            seed=seed,
            feature_cache_dir=self.study_dir.cache,
            backbone_identity=trial_backbone_identity(
                choices, merge_options(plugins.regularizers, "backbone_options")
            ),
            target_scale=target_scale,
        )
        metric = config.metric
        on_epoch_end = self.epoch_callback(
            trial, writer, history, epochs=lambda: trainer.planned_epochs or settings.epochs
        )
        cached = trainer.use_feature_cache()
        work: list[float] = []

        def on_epoch_start(epoch: int) -> None:
            # what this epoch costs (it trains what the strategy set for it), for the cost-aware pruner
            work.append(epoch_work(model, train_images=len(train), val_images=len(val), cached=cached))
            writer.stage(**{WORK_ATTR: {"gflop": sum(work), "epochs": len(work)}})

        result = fit_on_devices(  # training.devices > 1: data-parallel, this process is rank 0
            trainer,
            train,
            val,
            devices=config.training.devices,
            on_epoch_end=on_epoch_end,
            on_epoch_start=on_epoch_start,
            fit_epochs=self.epochs_fitter(trial),
        )
        writer.stage(best_epoch=result.best_epoch, epochs_run=len(result.history), stopped=result.stopped)
        if result.stopped is not None:
            log.info(
                "trial %d stopped after epoch %d (%s); kept epoch %d",
                trial.number,
                len(result.history) - 1,
                STOP_REASONS.get(result.stopped, result.stopped),
                result.best_epoch,
            )
        value = float(result.metrics[metric])
        if not math.isfinite(value):
            raise NonFiniteError(f"{metric} is {value}; a trial must end with a finite score")
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        info = {
            "params": params,
            "trainable_params": trainable,
            "feature_cache": result.used_feature_cache,
            "precision": result.precision,
            "device": str(self.device),
            "gflops": model.info.get("gflops"),
        }
        if "ema" in result.extras:  # which weights the checkpoint holds: the average's or the last step's
            info["ema"] = result.extras["ema"]
        counts = result.extras.get("per_class_counts")
        if counts is not None and self.data.labels:  # support, precision, recall, F1 per class
            info["per_class"] = per_class_rows(counts, classes=list(self.data.labels))
        if result.class_results is not None and self.data.labels:  # confusion, worst images
            info.update(class_attrs(result.class_results, val=val, labels=self.data.labels, config=config))
        if latency_needed(config):  # measured once per architecture × input size × device
            info[LATENCY_ATTR] = LatencyCache(self.study_dir.cache).measure(
                model, input_size=model.data_config.input_size, device=self.device
            )
        self.record_finished(
            trial,
            writer,
            metrics=result.metrics,
            started=started,
            speed=result.extras,
            backbone=model.info,
            info=info,
        )
        record = TrialRecord.of_trial(
            trial.number, config, choices, model=model, data=self.data, result=result, info=info
        )
        save_checkpoint(self.study_dir.trial_dir(trial.number), model, record)
        self.study_dir.share_checkpoint(trial.number)  # weights, then trial.json (an artefact store)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return objective_values(config, value=value, attrs=info)
