"""One trial's training and evaluation loop.

The loop is plugin-agnostic: a freezing strategy decides what trains (param groups with
learning-rate multipliers, re-read every epoch), regularizers add optimizer options, loss options,
batch transforms and penalty terms. Data arrives decoded (uint8, see :mod:`tlsearch.data`), lives on
the training device, and is augmented there on whole batches.

When the backbone is frozen for the whole trial and no regularizer needs real inputs, the backbone
runs once over the (unaugmented) data and the head trains on its features: the feature cache.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from tlsearch.data.augment import batch_indices, normalize, random_resized_crop_flip
from tlsearch.data.cache import DecodedImages
from tlsearch.errors import ConfigError, TlsearchError
from tlsearch.kinds import FreezingStrategy, ParamGroup, Regularizer, TransferModel
from tlsearch.train.device import Precision, resolve_precision
from tlsearch.train.metrics import evaluate_outputs

EpochCallback = Callable[[int, dict[str, float]], None]


class NonFiniteError(TlsearchError):
    """The loss or a metric became NaN or infinite."""


@dataclass
class TrainSettings:
    """What the loop needs of a study's ``training`` section, plus the sampled learning rate."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    augment: bool = True
    loss: str = "auto"
    eval_batch_size: int | None = None
    precision: str = "auto"


@dataclass
class FitResult:
    """Per-epoch metrics (``history``), the final epoch's ``metrics``, and how the trial ran."""

    history: list[dict[str, float]]
    metrics: dict[str, float]
    seconds: float
    used_feature_cache: bool
    precision: str
    extras: dict[str, Any] = field(default_factory=dict)


def merge_options(regularizers: Sequence[Regularizer], method: str) -> dict[str, Any]:
    """Merge one kind of options from several regularizers; a key claimed twice is an error."""
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for reg in regularizers:
        for key, value in getattr(reg, method)().items():
            if key in merged:
                raise ConfigError(f"regularizers {owner[key]!r} and {reg.name!r} both set {key!r}; choose one")
            merged[key], owner[key] = value, reg.name
    return merged


def build_optimizer(groups: Sequence[ParamGroup], *, lr: float, name: str = "adamw", weight_decay: float = 0.0,
                    fused: bool = False) -> torch.optim.Optimizer:
    """One optimizer over every group; each split into weights (decayed) and biases/norms (not decayed).

    Every optimizer param group carries ``lr_scale`` and the ``ParamGroup`` it came from, so
    :func:`apply_lr` can re-read the strategy's multipliers each epoch.
    """
    param_groups: list[dict[str, Any]] = []
    for group in groups:
        decay = [p for p in group.params if p.ndim >= 2]
        no_decay = [p for p in group.params if p.ndim < 2]
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                param_groups.append({"params": params, "weight_decay": wd, "lr": lr * group.lr_scale,
                                     "source": group, "name": group.name})
    if not param_groups:
        raise ConfigError("the freezing strategy left no parameter to train")
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=0.9, nesterov=True, fused=fused or None)
    raise ConfigError(f"optimizer {name!r} is not valid; valid choices: adamw, sgd")


def apply_lr(optimizer: torch.optim.Optimizer, *, base_lr: float, factor: float) -> None:
    for pg in optimizer.param_groups:
        pg["lr"] = base_lr * pg["source"].lr_scale * factor


def schedule_factor(kind: str, step: int, total: int) -> float:
    if kind == "constant" or total <= 1:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


class Trainer:
    """Trains ``model`` with a freezing strategy and regularizers on decoded images."""

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
    ) -> None:
        self.model = model
        self.strategy = strategy
        self.regularizers = list(regularizers)
        self.task = task
        self.num_outputs = num_outputs
        self.settings = settings
        self.device = torch.device(device)
        self.seed = seed
        self.precision: Precision = resolve_precision(settings.precision, self.device)
        self.loss_options = merge_options(self.regularizers, "loss_options")
        self.optimizer_options = merge_options(self.regularizers, "optimizer_options")
        unknown = set(self.loss_options) - {"label_smoothing"}
        if unknown:
            raise ConfigError(f"unknown loss option(s) {sorted(unknown)} from regularizers; valid: label_smoothing")

    # --- the pieces ---------------------------------------------------------------------------

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float()
        if self.task == "classification":
            return F.cross_entropy(outputs, targets, label_smoothing=float(self.loss_options.get("label_smoothing", 0.0)))
        kind = self.settings.loss if self.settings.loss != "auto" else "mse"
        if kind == "huber":
            return F.huber_loss(outputs, targets.float())
        if kind == "mse":
            return F.mse_loss(outputs, targets.float())
        raise ConfigError(f"loss {kind!r} does not fit task regression; valid: mse, huber")

    def use_feature_cache(self) -> bool:
        return self.strategy.backbone_frozen and not any(r.uses_inputs for r in self.regularizers)

    def _inputs(self, images_uint8: torch.Tensor, *, train: bool, generator: torch.Generator | None) -> torch.Tensor:
        x = normalize(images_uint8, self.model.data_config)
        if train and self.settings.augment:
            x = random_resized_crop_flip(x, generator=generator)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features of uint8 images, in eval mode, in evaluation-sized batches."""
        self.model.eval()
        out = []
        for idx in batch_indices(len(images), self._eval_batch_size(), shuffle=False):
            with self.precision.autocast():
                out.append(self.model.forward_features(self._inputs(images[idx], train=False, generator=None)).float())
        return torch.cat(out)

    @torch.inference_mode()
    def evaluate(self, images: torch.Tensor | None, targets: torch.Tensor, *, features: torch.Tensor | None = None
                 ) -> dict[str, float]:
        """Validation metrics and loss; from cached ``features`` when given."""
        self.model.eval()
        outputs = []
        n = len(targets)
        for idx in batch_indices(n, self._eval_batch_size(), shuffle=False):
            with self.precision.autocast():
                if features is not None:
                    outputs.append(self.model.head(features[idx]).float())
                else:
                    assert images is not None
                    outputs.append(self.model(self._inputs(images[idx], train=False, generator=None)).float())
        out = torch.cat(outputs)
        metrics = evaluate_outputs(out, targets, task=self.task)
        metrics["val_loss"] = float(self.loss(out, targets))
        return metrics

    def _eval_batch_size(self) -> int:
        return self.settings.eval_batch_size or self.settings.batch_size * 2

    # --- the loop -----------------------------------------------------------------------------

    def fit(self, train: DecodedImages, val: DecodedImages, *, on_epoch_end: EpochCallback | None = None) -> FitResult:
        """Train for ``settings.epochs``; ``on_epoch_end(epoch, metrics)`` may raise to stop (pruning)."""
        started = time.perf_counter()
        torch.manual_seed(self.seed)
        model = self.model.to(self.device)
        if self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        groups = self.strategy.setup(model)
        for reg in self.regularizers:
            reg.setup(model, num_outputs=self.num_outputs, task=self.task)
        optimizer = build_optimizer(
            groups, lr=self.settings.lr, name=self.settings.optimizer,
            weight_decay=float(self.optimizer_options.get("weight_decay", 0.0)),
            fused=self.device.type == "cuda",
        )
        scaler = self.precision.grad_scaler()

        train_x = torch.from_numpy(train.images).permute(0, 3, 1, 2).to(self.device)
        val_x = torch.from_numpy(val.images).permute(0, 3, 1, 2).to(self.device)
        train_y = torch.from_numpy(train.targets).to(self.device)
        val_y = torch.from_numpy(val.targets).to(self.device)

        cached = self.use_feature_cache()
        train_f = val_f = None
        if cached:
            train_f, val_f = self.features(train_x), self.features(val_x)

        generator = torch.Generator().manual_seed(self.seed)
        steps_per_epoch = len(batch_indices(len(train_y), self.settings.batch_size, shuffle=False, drop_last=True))
        total_steps = steps_per_epoch * self.settings.epochs
        step = 0
        history: list[dict[str, float]] = []
        try:
            for epoch in range(self.settings.epochs):
                epoch_start = time.perf_counter()
                model.train()
                self.strategy.set_train_mode(model)
                self.strategy.on_epoch_start(model, epoch, groups)
                running, seen = 0.0, 0
                for idx in batch_indices(len(train_y), self.settings.batch_size, shuffle=True,
                                         generator=generator, drop_last=True):
                    apply_lr(optimizer, base_lr=self.settings.lr, factor=schedule_factor(self.settings.scheduler, step, total_steps))
                    loss = self._step(model, optimizer, scaler, idx, train_x, train_y, train_f, generator)
                    if not math.isfinite(loss):
                        raise NonFiniteError(f"training loss became {loss} at epoch {epoch}, step {step}")
                    running += loss * len(idx)
                    seen += len(idx)
                    step += 1
                metrics = self.evaluate(val_x, val_y, features=val_f)
                metrics["train_loss"] = running / max(seen, 1)
                metrics["epoch_seconds"] = time.perf_counter() - epoch_start
                bad = [k for k, v in metrics.items() if not math.isfinite(v)]
                if bad:
                    raise NonFiniteError(f"metric(s) {bad} became non-finite at epoch {epoch}: {metrics}")
                history.append(metrics)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, metrics)
        finally:
            for reg in self.regularizers:
                reg.teardown(model)
        return FitResult(history, history[-1], time.perf_counter() - started, cached, self.precision.name)

    def _step(self, model: TransferModel, optimizer: torch.optim.Optimizer, scaler: Any, idx: torch.Tensor,
              train_x: torch.Tensor, train_y: torch.Tensor, train_f: torch.Tensor | None,
              generator: torch.Generator) -> float:
        idx = idx.to(self.device)
        targets = train_y[idx]
        with self.precision.autocast():
            if train_f is not None:
                features = train_f[idx]
                images = None
            else:
                images = self._inputs(train_x[idx], train=True, generator=generator)
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
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return float(loss.detach())
