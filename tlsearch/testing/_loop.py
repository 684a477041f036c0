"""Train a tiny model with the real :class:`~tlsearch.train.Trainer` and record what each epoch did.

Plugin tests check behaviour over epochs (what trained, what stayed frozen, which learning-rate
multipliers the optimizer used, what BatchNorm did) through the loop that ships, not a copy of it:
:func:`train_and_record` turns in-memory images into the decoded form a trial receives and runs
``Trainer.fit``, snapshotting the model when each epoch starts (after the strategy's
``on_epoch_start`` and ``set_train_mode``) and when it ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tlsearch.data.cache import DecodedImages
from tlsearch.data.sources import ImageList
from tlsearch.kinds import FreezingStrategy, Regularizer, TransferModel
from tlsearch.preprocessing import DataConfig
from tlsearch.train.loop import Trainer
from tlsearch.train.settings import TrainSettings


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer (running statistics included), by name."""
    state = {f"param:{n}": p.detach().clone() for n, p in model.named_parameters()}
    state.update({f"buffer:{n}": b.detach().clone() for n, b in model.named_buffers()})
    return state


@dataclass
class EpochRecord:
    """What one epoch of :func:`train_and_record` saw.

    ``trainable``, ``lr_scales`` (optimizer group name → the multiplier its ``ParamGroup`` carries)
    and ``bn_training`` are read when the epoch's first step is about to run; ``before`` and
    ``after`` are snapshots of the model then and after the epoch; ``metrics`` are the epoch's real
    metrics (``train_loss``, ``val_loss``, ``accuracy`` …) and ``losses`` its mean training loss.
    """

    epoch: int
    trainable: set[str]
    lr_scales: dict[str, float]
    bn_training: dict[str, bool]
    before: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


def decoded_images(images: torch.Tensor, targets: torch.Tensor, data_config: DataConfig) -> DecodedImages:
    """In-memory images as a trial receives them: NHWC uint8 (+ targets), without any file.

    ``images`` is NCHW, either uint8 or normalised floats (as :func:`synthetic_images` makes,
    de-normalised with ``data_config``'s mean and std).
    """
    if images.dtype != torch.uint8:
        mean = torch.tensor(data_config.mean).view(1, 3, 1, 1)
        std = torch.tensor(data_config.std).view(1, 3, 1, 1)
        images = ((images * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    array = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())
    if targets.dtype.is_floating_point:
        target_array = targets.float().reshape(len(targets), -1).numpy()
        source = ImageList([], [], None, [f"t{i}" for i in range(target_array.shape[1])])
    else:
        target_array = targets.long().numpy()
        source = ImageList([], [], [str(c) for c in range(int(targets.max()) + 1)])
    return DecodedImages(array, target_array, source)


def train_and_record(
    model: TransferModel,
    strategy: FreezingStrategy,
    *,
    regularizers: Sequence[Regularizer] = (),
    images: torch.Tensor,
    targets: torch.Tensor,
    epochs: int = 2,
    steps_per_epoch: int = 2,
    batch_size: int = 8,
    lr: float = 1e-2,
    task: str = "classification",
    num_outputs: int | None = None,
    device: str = "cpu",
    **settings: Any,
) -> list[EpochRecord]:
    """Train ``model`` with ``strategy`` and ``regularizers`` in the real trainer; one record per epoch.

    Each epoch runs ``steps_per_epoch`` steps of ``batch_size`` images (cycled from ``images``);
    validation runs on up to 16 of them. ``settings`` override :class:`TrainSettings` (defaults
    here: no compile, no feature cache, so the backbone really runs in every step).
    """
    num_outputs = num_outputs or (int(targets.max()) + 1 if task == "classification" else 1)
    n_train = steps_per_epoch * batch_size
    index = torch.arange(n_train) % len(images)
    train = decoded_images(images[index], targets[index], model.data_config)
    val = decoded_images(images[:16], targets[:16], model.data_config)
    trainer = Trainer(
        model,
        strategy=strategy,
        regularizers=regularizers,
        task=task,
        num_outputs=num_outputs,
        settings=TrainSettings(
            **{
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "compile": "never",
                "feature_cache": False,
                "precision": "fp32",
                "loader_workers": 0,
                **settings,
            }
        ),
        device=device,
    )
    records: list[EpochRecord] = []

    def started(epoch: int) -> None:
        assert trainer.optimizer is not None
        records.append(
            EpochRecord(
                epoch=epoch,
                trainable={n for n, p in model.named_parameters() if p.requires_grad},
                lr_scales={pg["name"]: pg["source"].lr_scale for pg in trainer.optimizer.param_groups},
                bn_training={
                    n: m.training
                    for n, m in model.named_modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm)
                },
                before=snapshot(model),
            )
        )

    def ended(epoch: int, metrics: dict[str, float]) -> None:
        records[-1].after = snapshot(model)
        records[-1].metrics = dict(metrics)
        records[-1].losses = [metrics["train_loss"]]

    trainer.fit(train, val, on_epoch_start=started, on_epoch_end=ended)
    return records


simulate_training = train_and_record  # the name of earlier releases, which ran a copy of the loop
