"""The Optuna objective: one trial = sample plugins → build → fine-tune → record → checkpoint."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from tlsearch.config import ResolvedSpace, StudyConfig
from tlsearch.data import DecodedImages, ImageList, decode_images
from tlsearch.errors import TlsearchError
from tlsearch.kinds import TransferModel
from tlsearch.preprocessing import DataConfig
from tlsearch.registry import PluginManager
from tlsearch.search.checkpoint import TrialRecord, save_checkpoint
from tlsearch.search.sampling import TrialPlugins, describe_choices, instantiate, sample_choices
from tlsearch.search.study_dir import StudyDir
from tlsearch.train import Trainer, TrainSettings, merge_options, resolve_device


@dataclass
class StudyData:
    """The study's train/val images, decoded once per preprocessing and kept for all trials of a process."""

    train: ImageList
    val: ImageList
    cache_dir: Any
    on_bad_image: str = "error"
    progress: bool = True
    _decoded: dict[DataConfig, tuple[DecodedImages, DecodedImages]] = field(default_factory=dict)

    @property
    def labels(self) -> list[str] | None:
        return self.train.classes

    @property
    def num_outputs(self) -> int:
        return self.train.num_outputs

    def decoded(self, config: DataConfig) -> tuple[DecodedImages, DecodedImages]:
        if config not in self._decoded:
            kw = {"cache_dir": self.cache_dir, "on_bad_image": self.on_bad_image, "progress": self.progress}
            self._decoded[config] = (
                decode_images(self.train, config, description=f"decoding train images at {config.input_size}px", **kw),
                decode_images(self.val, config, description=f"decoding val images at {config.input_size}px", **kw),
            )
        return self._decoded[config]


def build_model(plugins: TrialPlugins, *, num_outputs: int, image_size: int | None) -> TransferModel:
    """Backbone (with the options regularizers ask for) + head; ``image_size`` overrides the input size."""
    options = merge_options(plugins.regularizers, "backbone_options")
    built = plugins.backbone.build(**options)
    if image_size is not None:
        built.data_config = built.data_config.with_size(image_size)
    return TransferModel(built, plugins.head.build(built.num_features, num_outputs))


class Objective:
    """Callable for ``study.optimize``. Every trial records as user attributes: ``choices``,
    ``plugins``, ``history`` (per-epoch metrics), ``metrics``, ``seconds``, ``params`` (parameter
    count), ``trainable_params``, ``feature_cache`` and, when it fails, ``failure``."""

    def __init__(self, *, config: StudyConfig, space: ResolvedSpace, pm: PluginManager, data: StudyData,
                 study_dir: StudyDir, on_event: Any = None) -> None:
        self.config = config
        self.space = space
        self.pm = pm
        self.data = data
        self.study_dir = study_dir
        self.device = resolve_device(config.training.device)
        self.on_event = on_event or (lambda *a, **k: None)

    def __call__(self, trial: optuna.Trial) -> float:
        started = time.perf_counter()
        out = str(self.study_dir.root)
        choices = sample_choices(trial, self.space)
        trial.set_user_attr("choices", choices)
        self.pm.notify("tlsearch_trial_start", trial=trial, choices=choices, out_dir=out)
        self.on_event("trial_start", trial=trial, choices=choices)
        history: list[dict[str, float]] = []
        try:
            value = self._run(trial, choices, history, started)
        except optuna.TrialPruned:
            self._end(trial, "PRUNED", None, history[-1] if history else {})
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, TlsearchError) else str(exc)
            trial.set_user_attr("failure", reason)
            self._end(trial, "FAIL", None, {"failure": reason})  # type: ignore[dict-item]
            raise
        self._end(trial, "COMPLETE", value, history[-1])
        return value

    def _end(self, trial: optuna.Trial, state: str, value: float | None, metrics: dict[str, float]) -> None:
        self.pm.notify("tlsearch_trial_end", trial=trial, state=state, value=value, metrics=metrics,
                       out_dir=str(self.study_dir.root))
        self.on_event("trial_end", trial=trial, state=state, value=value, metrics=metrics)

    def _run(self, trial: optuna.Trial, choices: dict[str, Any], history: list[dict[str, float]],
             started: float) -> float:
        config = self.config
        plugins = instantiate(choices, self.pm.registry)
        trial.set_user_attr("plugins", plugins.names())
        model = build_model(plugins, num_outputs=self.data.num_outputs, image_size=config.data.image_size)
        train, val = self.data.decoded(model.data_config)
        trainer = Trainer(
            model,
            strategy=plugins.freezing,
            regularizers=plugins.regularizers,
            task=config.task,
            num_outputs=self.data.num_outputs,
            settings=TrainSettings(
                epochs=config.training.epochs, batch_size=config.training.batch_size, lr=choices["train.lr"],
                optimizer=config.training.optimizer, scheduler=config.training.scheduler,
                augment=config.training.augment, loss=config.training.loss,
                eval_batch_size=config.training.eval_batch_size, precision=config.training.precision,
            ),
            device=self.device,
            seed=(config.search.seed or 0) + trial.number,
        )
        metric = config.metric

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            history.append(metrics)
            trial.set_user_attr("history", history)
            trial.report(metrics[metric], epoch)
            self.pm.notify("tlsearch_epoch_end", trial=trial, epoch=epoch, metrics=metrics,
                           out_dir=str(self.study_dir.root))
            self.on_event("epoch_end", trial=trial, epoch=epoch, metrics=metrics)
            if epoch + 1 < config.training.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with {metric}={metrics[metric]:.4g}")

        result = trainer.fit(train, val, on_epoch_end=on_epoch_end)
        value = float(result.metrics[metric])
        if not math.isfinite(value):
            raise TlsearchError(f"{metric} is {value}; a trial must end with a finite score")
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        info = {"params": params, "trainable_params": trainable, "feature_cache": result.used_feature_cache,
                "precision": result.precision, "device": str(self.device), **model.info}
        for key, v in {"metrics": result.metrics, "seconds": time.perf_counter() - started, **info}.items():
            trial.set_user_attr(key, v)
        record = TrialRecord(
            number=trial.number, study=config.name, task=config.task, choices=choices,
            data_config=model.data_config.to_dict(), num_outputs=self.data.num_outputs, labels=self.data.labels,
            metric=metric, value=value, metrics=result.metrics, info={**info, "summary": describe_choices(choices)},
        )
        save_checkpoint(self.study_dir.trial_dir(trial.number), model, record)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return value
