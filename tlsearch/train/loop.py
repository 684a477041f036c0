"""One trial's training and evaluation loop.

The loop is plugin-agnostic: a freezing strategy decides what trains (param groups with
learning-rate multipliers, re-read every epoch), regularizers add optimizer options, loss options,
batch transforms and penalty terms. Data arrives decoded (uint8, see :mod:`tlsearch.data`), lives on
the training device when it fits (else streams from the memory-mapped cache), and is normalised and
augmented there on whole batches.

Speed (see ``benchmarks/README.md``, "Fast trials"): bf16 autocast (fp16 + grad scaler on GPUs
without bf16), channels_last for convolutional backbones, cuDNN autotuning, a fused optimizer on
CUDA, evaluation under ``inference_mode`` in 4× larger batches, ``torch.compile`` only for trials
long enough to repay it (:mod:`tlsearch.train.compiling`), and no host↔device synchronisation in
the step: the loss is summed on the device and checked every ``CHECK_EVERY`` steps.

When the backbone is frozen for the whole trial, no regularizer needs real inputs and inputs are
not randomly augmented, the backbone runs once over the data and the head trains on its features;
with ``feature_cache_dir`` those features are shared across trials (:mod:`tlsearch.train.features`).
Frozen-backbone trials skip random augmentation unless ``TrainSettings.augment_frozen`` (the
linear-probe convention), so the cached and uncached forms of a trial compute the same thing.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F

from tlsearch.config import METRICS
from tlsearch.data.augment import Normalizer, batch_indices, draw_crop_params, random_resized_crop_flip
from tlsearch.data.batches import (
    Placement,
    TensorBatches,
    batch_source,
    is_resident,
    plan_placement,
    release_resident,
)
from tlsearch.data.cache import DecodedImages
from tlsearch.data.policies import (
    apply_operations,
    draw_erase_params,
    random_erase,
)
from tlsearch.errors import ConfigError, TlsearchError
from tlsearch.kinds import FreezingStrategy, Regularizer, TransferModel
from tlsearch.train.best import BestEpoch, StopTraining, maximizes
from tlsearch.train.class_results import ClassResults, class_results
from tlsearch.train.compiling import decide_compile
from tlsearch.train.device import Precision, configure_backends, resolve_precision, use_channels_last
from tlsearch.train.ema import WeightAverage
from tlsearch.train.features import FeatureCache, feature_key
from tlsearch.train.head_init import init_head_from_data
from tlsearch.train.losses import class_counts, classification_loss, multilabel_loss
from tlsearch.train.metrics import evaluate_outputs, multilabel_evaluation
from tlsearch.train.optim import (
    apply_lr,
    build_optimizer,
    merge_options,
    no_weight_decay,
    schedule_factor,
    warmup_steps,
)
from tlsearch.train.probe import ProbeSolver, solvable_linear
from tlsearch.train.settings import TrainSettings
from tlsearch.train.targets import TargetScale
from tlsearch.train.timing import DataTimer
from tlsearch.validate import check_trainer_options

__all__ = [
    "MAX_BUDGET_EPOCHS",
    "FitResult",
    "NonFiniteError",
    "StopTraining",
    "TrainSettings",
    "Trainer",
    "apply_lr",
    "budget_epochs",
    "build_optimizer",
    "merge_options",
    "no_weight_decay",
    "schedule_factor",
]

EpochCallback = Callable[[int, dict[str, float]], None]
EpochStartCallback = Callable[[int], None]
#: ``fit_epochs(epoch, seconds_per_epoch)``: how many epochs in all fit the time left after ``epoch``
FitEpochsCallback = Callable[[int, float], int | None]
CHECK_EVERY = 50  # steps between checks that the loss is finite on CUDA (each check synchronises)
MAX_BUDGET_EPOCHS = 100
"""The most epochs a trial's ``budget_share`` grows its plan to (:func:`budget_epochs`): past it a
fine-tune has long converged, and the rest of the budget is the search's."""


def budget_epochs(fitted: int, *, epoch: int, planned: int, share: float | None) -> int:
    """A trial's epochs in all once epoch ``epoch`` has ended and ``fitted`` epochs in all fit
    before the deadline (``Trainer.fit``'s ``fit_epochs``), where ``planned`` were planned.

    Down: fewer fit than planned (but at least one more), so the plan ends at ``fitted``.
    Up: with a ``budget_share`` (a warm-start fine-tune's, :class:`TrainSettings`), after the
    first epoch only, the plan grows to the epochs that fit in ``share`` of the time left, at most
    :data:`MAX_BUDGET_EPOCHS`, never below ``planned``. Only after the first epoch: it is when the
    seconds per epoch are first known and the cosine has barely left its peak (a re-plan then
    moves the learning rate by a hair); growing a schedule that has already decayed would raise
    its learning rate again, throwing away what the low rate converged to.

    >>> budget_epochs(41, epoch=0, planned=8, share=0.5)  # 40 more fit: half of them
    21
    >>> budget_epochs(5, epoch=0, planned=8, share=0.5)  # the budget cannot fit the recipe
    5
    >>> budget_epochs(41, epoch=1, planned=8, share=0.5)  # later: only down
    8
    """
    if share is not None and epoch == 0:
        grown = epoch + 1 + int(share * max(0, fitted - epoch - 1))
        planned = max(planned, min(grown, MAX_BUDGET_EPOCHS))
    if epoch + 1 < fitted < planned:
        return fitted
    return planned


def training_batches(
    n: int, batch_size: int, *, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """One training epoch's batches: every image once (shuffled when ``generator`` is given).

    The last partial batch is kept (dropping it lost 40 of 360 images each epoch); only a final
    batch of one image is merged into the one before, since BatchNorm cannot train on one sample.
    """
    batches = batch_indices(n, batch_size, shuffle=generator is not None, generator=generator)
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


@dataclass(frozen=True)
class BatchDraws:
    """One training batch's random draws: crop/flip and erasing parameters (on the device, or
    None when the policy has none), and the seed of its per-image operations."""

    crop: torch.Tensor | None
    erase: torch.Tensor | None
    seed: int


class NonFiniteError(TlsearchError):
    """The loss or a metric became NaN or infinite."""


@dataclass
class FitResult:
    """Per-epoch metrics (``history``), the kept (best) epoch's ``metrics`` and index
    (``best_epoch``), why training ended before ``settings.epochs`` (``stopped``: ``"patience"``,
    ``"converged"`` for a solved probe whose solver converged, or the reason of a
    :class:`~tlsearch.train.best.StopTraining` such as ``"timeout"``; None when it ran all its
    epochs), and how the trial ran. The model holds the best epoch's weights.

    ``extras``: ``data_placement`` (+ ``_reason``), ``channels_last``, ``compile`` (+ ``_reason``),
    ``feature_cache`` (key, hit, seconds) for cached trials, ``epochs``: per epoch
    ``train_seconds``, ``train_images`` and, when profiling, ``data_seconds``; with EMA, ``ema``:
    ``decay``, ``used`` (the model now holds the average's weights), the last epoch's
    ``raw_<metric>`` and ``ema_<metric>``, or ``skipped`` (why there was none).
    """

    history: list[dict[str, float]]
    metrics: dict[str, float]
    seconds: float
    used_feature_cache: bool
    precision: str
    extras: dict[str, Any] = field(default_factory=dict)
    best_epoch: int = -1
    stopped: str | None = None
    class_results: ClassResults | None = None  # classification: the kept epoch's confusion, worst images


Source = Any  # ResidentBatches | StreamingBatches | TensorBatches: len() and iterate(batches)


class Trainer:
    """Trains ``model`` with a freezing strategy and regularizers on decoded images.

    ``feature_cache_dir`` (the study folder's ``cache/``) shares frozen backbones' features across
    trials; ``backbone_identity`` (the backbone plugin's name, hyperparameters and build options) is
    part of that cache's key. ``profile`` measures the time each step waits for its data.

    ``target_scale`` (regression): the model trains on targets standardised with it, and the
    validation metrics (R², MAE, RMSE) are computed in the original units; ``val_loss`` stays the
    training loss on the standardised scale (:mod:`tlsearch.train.targets`).
    """

    def __init__(
        self,
        model: TransferModel,
        *,
        strategy: FreezingStrategy,
        regularizers: Sequence[Regularizer] = (),
        task: str = "classification",
        num_outputs: int,
        settings: TrainSettings,
        device: torch.device | str = "cpu",
        seed: int = 0,
        feature_cache_dir: str | Path | None = None,
        backbone_identity: Mapping[str, Any] | None = None,
        profile: bool = False,
        target_scale: TargetScale | None = None,
    ) -> None:
        self.model = model
        self.target_scale = target_scale if task == "regression" else None
        self.strategy = strategy
        self.regularizers = list(regularizers)
        self.task = task
        self.num_outputs = num_outputs
        self.settings = settings
        self.device = torch.device(device)
        self.seed = seed
        self.feature_cache_dir = Path(feature_cache_dir) if feature_cache_dir is not None else None
        self.backbone_identity = backbone_identity
        self.profile = profile
        self.precision: Precision = resolve_precision(settings.precision, self.device)
        self.loss_options = merge_options(self.regularizers, "loss_options")
        self.optimizer_options = merge_options(self.regularizers, "optimizer_options")
        check_trainer_options(
            task=task,
            loss=settings.loss,
            loss_options=self.loss_options,
            optimizer_options=self.optimizer_options,
        )
        if settings.clip_grad_norm is not None and not settings.clip_grad_norm > 0:
            raise ConfigError(
                f"clip_grad_norm must be > 0 (or None: no clipping) but got {settings.clip_grad_norm}"
            )
        self.channels_last = False
        self.policy = settings.augment_policy()  # a bad policy fails here, before any work
        self._operations = self.policy.operations()
        self._normalizer: Normalizer | None = None
        self.optimizer: torch.optim.Optimizer | None = None  # the real optimizer while fit runs
        self.ema: WeightAverage | None = None  # the weights' moving average while fit runs
        self._warmup = 0  # warm-up steps, known once fit counts the steps
        self.planned_epochs: int | None = None  # the epochs fit plans while it runs (it may re-plan)
        self.class_counts: torch.Tensor | None = None  # training images per class, set by fit
        self._sample_weights: torch.Tensor | None = None  # per training image, when a sampler asks
        self._last_classes: ClassResults | None = None  # the last evaluation's per-class results
        self._last_counts: torch.Tensor | None = None  # multilabel: the last evaluation's per-label counts
        #: this rank's part in a trial on several devices (:mod:`tlsearch.train.distributed`), else None
        self.parallel: Any = None
        self._train_images = 0  # multilabel: the training images the per-label counts are out of

    # --- the pieces ---------------------------------------------------------------------------

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, *, train: bool = True) -> torch.Tensor:
        """The task loss; in training (``train``) with the regularizers' loss options (label smoothing,
        class weights, focal loss, logit adjustment: :mod:`tlsearch.train.losses`).

        Validation loss is the plain task loss, so ``metric: val_loss`` and pruning on it compare
        trials with and without label smoothing on the same scale.
        """
        outputs = outputs.float()
        if self.task == "multilabel":  # BCE-with-logits per label (+ class weights, focal: losses.py)
            if not train or not self.loss_options:
                return multilabel_loss(outputs, targets)
            return multilabel_loss(
                outputs,
                targets,
                options=self.loss_options,
                positives=self.class_counts,
                total=self._train_images,
            )
        if self.task == "classification":
            if not train or not self.loss_options:
                return F.cross_entropy(outputs, targets)
            return classification_loss(outputs, targets, options=self.loss_options, counts=self.class_counts)
        kind = self.settings.loss if self.settings.loss != "auto" else "mse"
        if kind == "huber":
            return F.huber_loss(outputs, targets.float())
        if kind == "mse":
            return F.mse_loss(outputs, targets.float())
        raise ConfigError(f"loss {kind!r} does not fit task regression; valid: mse, huber")

    def augments(self) -> bool:
        """Random augmentation of training inputs (the policy): on, except for frozen backbones
        (see the module doc)."""
        return self.policy.is_random and (not self.strategy.backbone_frozen or self.settings.augment_frozen)

    def use_feature_cache(self) -> bool:
        return (
            self.settings.feature_cache
            and self.strategy.backbone_frozen
            and not self.augments()
            and not any(r.uses_inputs for r in self.regularizers)
        )

    def solves_probe(self) -> bool:
        """True when the head is solved (L-BFGS) rather than trained: a classification trial on
        cached features whose strategy gives ``probe_l2``, with a linear head and no regularizer
        penalty (which the solver would leave out)."""
        return (
            self.settings.solve_probe
            and self.task == "classification"
            and self.strategy.probe_l2 is not None
            and self.use_feature_cache()
            and solvable_linear(self.model.head) is not None
            and not any(type(r).penalty is not Regularizer.penalty for r in self.regularizers)
        )

    def _inputs(
        self, images_uint8: torch.Tensor, *, train: bool, draws: BatchDraws | None = None
    ) -> torch.Tensor:
        """Uint8 NCHW batch on the device → the model's float input (normalised, augmented when
        training: the policy's operations on uint8, then crop + flip, then random erasing)."""
        if self._normalizer is None or self._normalizer.scale.device != images_uint8.device:
            self._normalizer = Normalizer(self.model.data_config, device=images_uint8.device)
        augment = train and self.augments()
        if augment and self._operations is not None:
            seed = draws.seed if draws is not None else int(torch.randint(2**62, ()))
            images_uint8 = apply_operations(images_uint8, self._operations, seed=seed)
        x = self._normalizer(images_uint8)
        if augment and self.policy.crops:
            x = random_resized_crop_flip(x, params=draws.crop if draws is not None else None)
        if augment and self.policy.random_erasing > 0:
            erase = draws.erase if draws is not None else None
            if erase is None:
                erase = draw_erase_params(len(x)).to(x.device)
            x = random_erase(x, erase, probability=self.policy.random_erasing)
        # one layout whatever the source: the uint8 cache is NHWC, so un-augmented batches arrive as
        # channels_last views while augmented ones are NCHW; the backbone sees the layout chosen for it
        return x.contiguous(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )

    def _eval_batch_size(self) -> int:
        return self.settings.eval_batch_size or self.settings.batch_size * 4

    @torch.inference_mode()
    def _features_of(self, source: Source) -> torch.Tensor:
        self.model.eval()
        out = []
        for images, _ in source.iterate(batch_indices(len(source), self._eval_batch_size(), shuffle=False)):
            with self.precision.autocast():
                out.append(self.model.forward_features(self._inputs(images, train=False)).float())
        return torch.cat(out)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features of NCHW uint8 images, in eval mode, in evaluation-sized batches."""
        return self._features_of(TensorBatches(images, torch.zeros(len(images), device=images.device)))

    @torch.inference_mode()
    def _evaluate(
        self, source: Source, *, cached: bool, model: TransferModel | None = None
    ) -> dict[str, float]:
        """Validation metrics of ``model`` (default: the trained one; the EMA copy is the other)."""
        model = self.model if model is None else model
        model.eval()
        outputs, targets = [], []
        parallel = self.parallel  # several devices: each evaluates its part, then all gather
        batches = (
            batch_indices(len(source), self._eval_batch_size(), shuffle=False)
            if parallel is None
            else parallel.eval_batches(len(source), self._eval_batch_size())
        )
        for inputs, batch_targets in source.iterate(batches):
            with self.precision.autocast():
                out = model.head(inputs) if cached else model(self._inputs(inputs, train=False))
            outputs.append(out.float())
            targets.append(batch_targets)
        out, target = torch.cat(outputs), torch.cat(targets)
        if parallel is not None:
            out, target = parallel.gather(out, target, len(source))
        scale = self.target_scale
        if self.task == "multilabel":  # per label: counts at the tuned thresholds, AP, threshold
            metrics, self._last_counts = multilabel_evaluation(out, target)
        elif scale is None:
            metrics = evaluate_outputs(out, target, task=self.task, top_k=self.settings.top_k)
            if self.task == "classification":  # the kept epoch's go to FitResult.class_results
                self._last_classes = class_results(out, target)
        else:  # the user's units
            restored = scale.restore(target.float().view_as(out))
            metrics = evaluate_outputs(scale.restore(out), restored, task=self.task)
        metrics["val_loss"] = float(self.loss(out, target, train=False))
        return metrics

    def evaluate(
        self, images: torch.Tensor | None, targets: torch.Tensor, *, features: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Validation metrics and loss of NCHW uint8 ``images``; from cached ``features`` when given.
        ``targets`` are in the original units (standardised here with ``target_scale``)."""
        if self.target_scale is not None:
            standard = self.target_scale.standardise(targets.cpu().numpy())
            targets = torch.from_numpy(standard).to(targets.device)
        if features is not None:
            return self._evaluate(TensorBatches(features, targets), cached=True)
        if images is None:
            raise ValueError("evaluate needs images or features")
        return self._evaluate(TensorBatches(images, targets), cached=False)

    # --- data ---------------------------------------------------------------------------------

    def _place(self, train: DecodedImages, val: DecodedImages) -> Placement:
        if self.device.type == "cuda" and self.settings.data_placement == "auto":
            if is_resident(train.images, self.device) and is_resident(val.images, self.device):
                return Placement("resident", "already on the device from an earlier trial")
            release_resident()
            torch.cuda.empty_cache()
        return plan_placement(
            train.images.nbytes + val.images.nbytes,
            device=self.device,
            mode=self.settings.data_placement,
            budget_fraction=self.settings.data_budget_fraction,
        )

    def _image_sources(
        self, train: DecodedImages, val: DecodedImages, extras: dict[str, Any]
    ) -> tuple[Source, Source]:
        placement = self._place(train, val)
        extras["data_placement"], extras["data_placement_reason"] = placement.where, placement.reason
        workers = self.settings.loader_workers
        return (
            batch_source(train, device=self.device, placement=placement.where, workers=workers),
            batch_source(val, device=self.device, placement=placement.where, workers=workers),
        )

    def _feature_sources(
        self, train: DecodedImages, val: DecodedImages, extras: dict[str, Any]
    ) -> tuple[Source, Source]:
        started = time.perf_counter()

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            train_src, val_src = self._image_sources(train, val, extras)
            return self._features_of(train_src), self._features_of(val_src)

        key = None
        hit = False
        if self.feature_cache_dir is None:
            train_f, val_f = compute()
        else:
            key = feature_key(
                backbone=self.model.backbone,
                identity=self.backbone_identity,
                data_config=self.model.data_config,
                train=train,
                val=val,
                precision=self.precision.name,
            )
            (train_f, val_f), hit = FeatureCache(self.feature_cache_dir).get_or_compute(
                key, compute, device=self.device
            )
            if hit:
                extras["data_placement"], extras["data_placement_reason"] = "features", "cached features"
        extras["feature_cache"] = {"key": key, "hit": hit, "seconds": time.perf_counter() - started}
        train_y = torch.from_numpy(train.targets).to(self.device)
        val_y = torch.from_numpy(val.targets).to(self.device)
        return TensorBatches(train_f, train_y), TensorBatches(val_f, val_y)

    # --- the loop -----------------------------------------------------------------------------

    def fit(
        self,
        train: DecodedImages,
        val: DecodedImages,
        *,
        on_epoch_end: EpochCallback | None = None,
        on_epoch_start: EpochStartCallback | None = None,
        fit_epochs: FitEpochsCallback | None = None,
    ) -> FitResult:
        """Train for ``settings.epochs``; ``on_epoch_end(epoch, metrics)`` may raise to stop (pruning),
        or raise :class:`~tlsearch.train.best.StopTraining` to end training normally after this epoch.
        The model ends with the best epoch's weights (``FitResult.best_epoch``; see
        :mod:`tlsearch.train.best`), and ``settings.patience`` stops training early.

        Each epoch starts with ``model.train()``, then the strategy's ``on_epoch_start`` (what trains
        this epoch), then its ``set_train_mode`` (the BatchNorm policy, which so sees this epoch's
        ``requires_grad``), then the observer ``on_epoch_start(epoch)`` (tests and
        :mod:`tlsearch.testing` record the epoch's state there, ``self.optimizer`` included, which
        is set only while ``fit`` runs).

        ``fit_epochs(epoch, seconds_per_epoch)`` (the study's time budget, when it has one): after
        each epoch, how many epochs in all fit the time left at the mean epoch's duration so far.
        When fewer than planned (but at least one more) fit, the schedule is re-planned to end
        there: the cosine then decays to zero at the budget instead of being cut half-way at a
        high learning rate (``extras["epochs_fitted"]``). With ``settings.budget_share`` the plan
        also grows, once, after the first epoch, to that share of the time left
        (:func:`budget_epochs`). ``self.planned_epochs`` is the current plan while ``fit`` runs
        (the objective's epoch callback reads it: which epoch is the last).
        """
        started = time.perf_counter()
        if self.target_scale is not None:  # same images arrays (device copies stay cached)
            train = replace(train, targets=self.target_scale.standardise(train.targets))
            val = replace(val, targets=self.target_scale.standardise(val.targets))
        self._sample_weights = None
        if self.task == "multilabel":  # training images per label, for the per-label class weights
            self.class_counts, self._train_images = self._label_counts(train.targets)
        if self.task == "classification":
            train_counts = class_counts(train.targets, num_classes=self.num_outputs)
            self.class_counts = train_counts.to(self.device)  # the loss reads them every step
            for reg in self.regularizers:
                per_class = reg.class_sampling_weights(train_counts)
                if per_class is not None:  # the first that asks decides (see Regularizer)
                    self._sample_weights = per_class[torch.as_tensor(train.targets).long()].double()
                    break
        torch.manual_seed(self.seed)
        configure_backends(self.device)
        model = self.model.to(self.device)
        self.channels_last = use_channels_last(model.backbone, self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        groups = self.strategy.setup(model)
        # before the regularizers' setup: no hook of theirs is copied into the average
        ema = self.ema = WeightAverage(model, decay=self.settings.ema) if self.settings.ema else None
        for reg in self.regularizers:
            reg.setup(model, num_outputs=self.num_outputs, task=self.task)
        optimizer = build_optimizer(
            groups,
            lr=self.settings.lr,
            name=self.settings.optimizer,
            weight_decay=float(self.optimizer_options.get("weight_decay", 0.0)),
            no_decay=no_weight_decay(model),
            decay_exempt=[p for reg in self.regularizers for p in reg.replaces_weight_decay(model)],
            fused=self.device.type == "cuda",
        )
        self.optimizer = optimizer
        scaler = self.precision.grad_scaler()
        extras: dict[str, Any] = {"channels_last": self.channels_last, "epochs": []}

        cached = self.use_feature_cache()
        sources = (
            self._feature_sources(train, val, extras) if cached else self._image_sources(train, val, extras)
        )
        train_src, val_src = sources
        # a head module with init_from_data (kinds.Head) sees the training features once, before any step
        features = (lambda: train_src.inputs) if cached else partial(self._features_of, train_src)
        if init_head_from_data(model, features=features, targets=train.targets):
            extras["head_init_from_data"] = True
        self._calibrate(model, train_src, cached=cached)
        # a solved probe steps its own L-BFGS; ``self.optimizer`` stays the strategy's (observers read it)
        solver = self._probe_solver(model, train_src, extras) if cached and self.solves_probe() else None
        if ema is not None:
            extras["ema"] = {"decay": self.settings.ema, "used": False}
            if solver is not None:  # a solved head has no steps to average
                ema = self.ema = None
                extras["ema"]["skipped"] = "the head is solved, not trained by steps"
        steps_per_epoch = len(training_batches(len(train_src), self.settings.batch_size))
        total_steps = steps_per_epoch * self.settings.epochs
        self._warmup = warmup_steps(self.settings.warmup, total_steps)
        decision = decide_compile(
            mode="never" if cached else self.settings.compile,  # a head on features: nothing to gain
            device=self.device,
            expected_images=total_steps * self.settings.batch_size,
            model_name=str(model.info.get("model", "")),
        )
        extras["compile"], extras["compile_reason"] = decision.compile, decision.reason
        if decision.compile:
            model.backbone.compile()

        generator = torch.Generator().manual_seed(self.seed)
        if self.parallel is not None:  # dropout, drop-path, mixup: independent on each rank from here
            self.parallel.seed_rank(self.seed)
        step = 0
        history: list[dict[str, float]] = []
        best = self._best_epoch()
        kept_classes: ClassResults | None = None
        kept_counts: torch.Tensor | None = None  # multilabel
        stopped: str | None = None
        try:
            planned = self.planned_epochs = self.settings.epochs
            for epoch in itertools.count():
                if epoch >= planned:
                    if planned < self.settings.epochs:
                        stopped = "timeout"  # re-planned to end at the budget (fit_epochs)
                    break
                epoch_start = time.perf_counter()
                model.train()
                self.strategy.on_epoch_start(model, epoch, groups)
                self.strategy.set_train_mode(model)  # after: the BN policy sees this epoch's freezing
                if on_epoch_start is not None:
                    on_epoch_start(epoch)
                if solver is not None:
                    train_loss, timing = self._solve_epoch(solver, len(train_src), extras)
                else:
                    train_loss, step, timing = self._train_epoch(
                        model,
                        optimizer,
                        scaler,
                        train_src,
                        generator=generator,
                        cached=cached,
                        step=step,
                        total_steps=total_steps,
                        epoch=epoch,
                    )
                extras["epochs"].append(timing)
                metrics = self._evaluate(val_src, cached=cached)
                classes, counts = self._last_classes, self._last_counts
                if ema is not None:
                    metrics = self._with_ema(
                        metrics, self._evaluate(val_src, cached=cached, model=ema.module)
                    )
                    if metrics["ema_used"]:
                        classes, counts = self._last_classes, self._last_counts
                metrics["train_loss"] = train_loss
                metrics["epoch_seconds"] = time.perf_counter() - epoch_start
                bad = [k for k, v in metrics.items() if not math.isfinite(v)]
                if bad:
                    raise NonFiniteError(f"metric(s) {bad} became non-finite at epoch {epoch}: {metrics}")
                history.append(metrics)
                if (
                    best.offer(
                        epoch, metrics, partial(self.evaluated_state, model, cached=cached, metrics=metrics)
                    )
                    or not best.metrics
                ):
                    kept_classes, kept_counts = classes, counts
                if on_epoch_end is not None:
                    try:
                        on_epoch_end(epoch, metrics)
                    except StopTraining as stop:
                        stopped = stop.reason
                        break
                if best.exhausted(epoch) and epoch + 1 < planned:
                    stopped = "patience"
                    break
                if solver is not None and extras["probe_solver"]["converged"]:
                    # the optimum is reached: a later epoch would repeat this one's metrics
                    if epoch + 1 < self.settings.epochs:
                        stopped = "converged"
                    break
                share = self.settings.budget_share
                may_grow = share is not None and epoch == 0
                if fit_epochs is not None and solver is None and (epoch + 1 < planned or may_grow):
                    mean_seconds = sum(h["epoch_seconds"] for h in history) / len(history)
                    fitted = fit_epochs(epoch, mean_seconds)
                    replanned = planned
                    if fitted is not None:
                        replanned = budget_epochs(fitted, epoch=epoch, planned=planned, share=share)
                    if replanned != planned:  # the cosine (and its warm-up, done) now ends there
                        planned = self.planned_epochs = replanned
                        total_steps = steps_per_epoch * planned
                        extras["epochs_fitted"] = planned
            best.restore(model)  # before the regularizers' teardown: the state has their names too
            if ema is not None and history:
                kept = best.metrics or history[-1]  # the kept epoch says which copy scored it
                extras["ema"].update({k: v for k, v in kept.items() if k.startswith(("raw_", "ema_"))})
                extras["ema"]["used"] = bool(kept.get("ema_used"))
                if not best.metrics and extras["ema"]["used"]:
                    ema.copy_to(model)  # the checkpoint and the export get the better weights
        finally:
            self.planned_epochs = None
            self.optimizer = None  # its state (AdamW's moments) is freed with fit's frame, as before
            self.ema = None
            for reg in self.regularizers:
                reg.teardown(model)
            if decision.compile:
                model.backbone._compiled_call_impl = None  # back to eager for export and checkpoints
        extras["best_epoch"] = best.epoch
        if kept_classes is not None:  # per class of the kept epoch: true positives, support, predicted
            extras["per_class_counts"] = kept_classes.counts.int().tolist()
        elif kept_counts is not None:  # multilabel: and each label's AP and tuned threshold
            extras["per_class_counts"] = kept_counts.tolist()  # (see metrics.multilabel_evaluation)
        if stopped is not None:
            extras["stopped"] = {"reason": stopped, "after_epoch": len(history) - 1}
        return FitResult(
            history,
            best.metrics or history[-1],
            time.perf_counter() - started,
            cached,
            self.precision.name,
            extras,
            best_epoch=best.epoch if best.metrics else len(history) - 1,
            stopped=stopped,
            class_results=kept_classes,
        )

    def _label_counts(self, targets: Any) -> tuple[torch.Tensor, int]:
        """Multilabel: the training images carrying each label ``(L,)``, on the device, and how many
        images there are."""
        vectors = torch.as_tensor(targets).float()
        return (vectors > 0.5).float().sum(dim=0).to(self.device), len(vectors)

    def scored_module(self, metrics: Mapping[str, float]) -> torch.nn.Module:
        """The weights that scored an epoch's ``metrics`` while ``fit`` runs: the EMA copy's when it
        won that epoch (``ema_used``), else the trained model (what a best-epoch snapshot keeps)."""
        if self.ema is not None and metrics.get("ema_used"):
            return self.ema.module
        return self.model

    def _with_ema(self, raw: dict[str, float], averaged: dict[str, float]) -> dict[str, float]:
        """The epoch's metrics: the better of the raw and the averaged weights' (by ``settings.metric``),
        with both scores (``raw_<metric>``, ``ema_<metric>``) and which won (``ema_used``: 1 or 0)."""
        metric = self.settings.metric or next(iter(METRICS[self.task]))
        sign = 1.0 if METRICS[self.task].get(metric, "minimize") == "maximize" else -1.0
        used = sign * averaged[metric] > sign * raw[metric]
        return {
            **(averaged if used else raw),
            f"raw_{metric}": raw[metric],
            f"ema_{metric}": averaged[metric],
            "ema_used": float(used),
        }

    def _best_epoch(self) -> BestEpoch:
        metric = self.settings.select_metric or next(iter(METRICS[self.task]))  # accuracy, r2, map
        return BestEpoch(metric, maximize=maximizes(metric), patience=self.settings.patience)

    def evaluated_state(
        self, model: TransferModel, *, cached: bool, metrics: Mapping[str, float] | None = None
    ) -> Mapping[str, torch.Tensor]:
        """The weights that scored this epoch's ``metrics``, which the best epoch keeps
        (:mod:`tlsearch.train.best`): the model's, or the EMA copy's when it won the epoch
        (:meth:`scored_module`; the copy has the model's names); on cached features only the
        head's (the backbone does not change)."""
        scored = model if metrics is None else cast(TransferModel, self.scored_module(metrics))
        return scored.head.state_dict(prefix="head.") if cached else scored.state_dict()

    def _probe_solver(self, model: TransferModel, source: Source, extras: dict[str, Any]) -> ProbeSolver:
        linear = solvable_linear(model.head)
        l2 = self.strategy.probe_l2
        assert linear is not None and l2 is not None  # solves_probe() checked both
        features, targets = next(iter(source.iterate([torch.arange(len(source))])))
        extras["probe_solver"] = {"method": "lbfgs", "l2": float(l2)}
        return ProbeSolver(
            linear,
            features,
            targets,
            l2=float(l2),
            loss=lambda out, y: self.loss(out, y, train=True),
            epochs=self.settings.epochs,
        )

    @staticmethod
    def _solve_epoch(
        solver: ProbeSolver, images: int, extras: dict[str, Any]
    ) -> tuple[float, dict[str, float]]:
        """One epoch's share of the L-BFGS solve; its timing entry counts the images once."""
        started = time.perf_counter()
        result = solver.step()
        if not math.isfinite(result.train_loss):
            raise NonFiniteError(f"the probe solver's training loss became {result.train_loss}")
        extras["probe_solver"].update(
            iterations=result.iterations, grad_max=result.grad_max, converged=result.converged
        )
        timing = {
            "train_seconds": time.perf_counter() - started,
            "train_images": float(images),
            "steps": float(result.iterations),
        }
        return result.train_loss, timing

    def _calibrate(self, model: TransferModel, source: Source, *, cached: bool) -> None:
        """Give each regularizer that asks (``calibration_images``) that many training images, at
        the starting weights, before the first step: a seeded random subset, un-augmented."""
        wanted = [r for r in self.regularizers if r.calibration_images > 0]
        if not wanted:
            return
        count = min(max(r.calibration_images for r in wanted), len(source))
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(self.seed))[:count]
        batches = [
            (inputs if cached else self._inputs(inputs, train=False), targets)
            for inputs, targets in source.iterate(list(order.split(self.settings.batch_size)))
        ]
        for reg in wanted:
            reg.calibrate(model, batches=batches, num_outputs=self.num_outputs, task=self.task)

    def _train_epoch(
        self,
        model: TransferModel,
        optimizer: torch.optim.Optimizer,
        scaler: Any,
        source: Source,
        *,
        generator: torch.Generator,
        cached: bool,
        step: int,
        total_steps: int,
        epoch: int,
    ) -> tuple[float, int, dict[str, float]]:
        batches = self._epoch_batches(len(source), generator=generator)
        draws = self._epoch_draws(batches, generator) if not cached and self.augments() else None
        if self.parallel is not None:  # several devices: this rank's shard of every global batch
            batches, draws = self.parallel.shard_epoch(batches, draws)
        running = torch.zeros((), device=self.device)
        seen = 0
        timer = DataTimer(self.device, enabled=self.profile)
        check_every = CHECK_EVERY if self.device.type == "cuda" else 1
        started = time.perf_counter()
        iterator: Iterator[tuple[torch.Tensor, torch.Tensor]] = source.iterate(batches)
        for i in range(len(batches)):
            timer.start()
            inputs, targets = next(iterator)
            if not cached:
                inputs = self._inputs(inputs, train=True, draws=draws[i] if draws is not None else None)
            timer.stop()
            apply_lr(
                optimizer,
                base_lr=self.settings.lr,
                factor=schedule_factor(self.settings.scheduler, step, total_steps, warmup=self._warmup),
            )
            loss = self._step(model, optimizer, scaler, inputs, targets, cached=cached)
            if self.ema is not None:
                self.ema.update(model, step=step + 1)
            running += loss.detach() * len(targets)
            seen += len(targets)
            step += 1
            if (i + 1) % check_every == 0 and not bool(torch.isfinite(running)):
                raise NonFiniteError(f"training loss became non-finite at epoch {epoch}, by step {step}")
        if self.parallel is not None:  # the loss over all ranks; BatchNorm statistics averaged
            averaged = [model] if self.ema is None else [model, self.ema.module]
            running, seen = self.parallel.end_epoch(averaged, running, seen)
        train_loss = float(running) / max(seen, 1)  # synchronises once per epoch
        if not math.isfinite(train_loss):
            raise NonFiniteError(f"training loss became {train_loss} at epoch {epoch}")
        timing = {
            "train_seconds": time.perf_counter() - started,
            "train_images": float(seen),
            "steps": float(len(batches)),
        }
        if self.profile:
            timing["data_seconds"] = timer.total()
        return train_loss, step, timing

    def _epoch_batches(self, n: int, *, generator: torch.Generator) -> list[torch.Tensor]:
        """The epoch's batches: shuffled, or drawn with replacement by a regularizer's
        ``class_sampling_weights`` (the class-balanced sampler)."""
        weights = self._sample_weights
        if weights is None:
            return training_batches(n, self.settings.batch_size, generator=generator)
        order = torch.multinomial(weights, n, replacement=True, generator=generator)
        batches = list(order.split(self.settings.batch_size))
        if len(batches) > 1 and len(batches[-1]) == 1:  # as training_batches: BatchNorm needs two
            batches[-2:] = [torch.cat(batches[-2:])]
        return batches

    def _epoch_draws(self, batches: Sequence[torch.Tensor], generator: torch.Generator) -> list[BatchDraws]:
        """The epoch's random draws, made on the CPU (crop/flip and erasing moved to the device in
        one copy each): crop/flip first, so a ``crop_flip`` trial draws what it always did."""
        sizes = [len(b) for b in batches]
        n = len(batches)
        crops: list[torch.Tensor | None] = [None] * n
        erases: list[torch.Tensor | None] = [None] * n
        if self.policy.crops:
            crops = list(self._to_device(draw_crop_params(sum(sizes), generator=generator)).split(sizes))
        if self.policy.random_erasing > 0:
            erases = list(self._to_device(draw_erase_params(sum(sizes), generator=generator)).split(sizes))
        seeds = [0] * n
        if self._operations is not None:
            seeds = torch.randint(2**62, (n,), generator=generator).tolist()
        return [BatchDraws(crops[i], erases[i], seeds[i]) for i in range(n)]

    def _to_device(self, params: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            params = params.pin_memory()
        return params.to(self.device, non_blocking=True)

    def _step(
        self,
        model: TransferModel,
        optimizer: torch.optim.Optimizer,
        scaler: Any,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        cached: bool,
    ) -> torch.Tensor:
        with self.precision.autocast():
            if cached:
                features, images = inputs, None
            else:
                images = inputs
                for reg in self.regularizers:
                    images, targets = reg.transform_batch(images, targets, num_outputs=self.num_outputs)
                features = model.forward_features(images)
            outputs = model.head(features)
            loss = self.loss(outputs, targets)
            for reg in self.regularizers:
                term = reg.penalty(model, images=images, features=features)
                if term is not None:
                    loss = loss + term.float()
        optimizer.zero_grad(set_to_none=True)
        clip = self.settings.clip_grad_norm
        if scaler is not None:
            scaler.scale(loss).backward()
            self._reduce_gradients(optimizer)
            if clip is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                self._clip(optimizer, clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            self._reduce_gradients(optimizer)
            if clip is not None:
                self._clip(optimizer, clip)
            optimizer.step()
        return loss

    def _reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """On several devices: the global batch's gradient on every rank (before clipping)."""
        if self.parallel is not None:
            self.parallel.reduce_gradients(optimizer)

    @staticmethod
    def _clip(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        """Clip the global gradient norm over every parameter the optimizer updates (no host sync)."""
        params = [p for pg in optimizer.param_groups for p in pg["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
