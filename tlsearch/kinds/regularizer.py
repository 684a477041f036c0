"""Regularizers: what keeps a fine-tuned model close to what it learnt, or from over-fitting."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from tlsearch.kinds._base import Plugin
from tlsearch.kinds.model import TransferModel

if TYPE_CHECKING:
    from tlsearch.kinds.freezing import FreezingStrategy

#: the keys :meth:`Regularizer.optimizer_options` may return (the trainer reads these and no others)
OPTIMIZER_OPTIONS = ("weight_decay",)
#: the keys :meth:`Regularizer.loss_options` may return
LOSS_OPTIONS = (
    "label_smoothing",
    "class_weighting",
    "class_weighting_beta",
    "focal_gamma",
    "logit_adjustment_tau",
)


class Regularizer(Plugin):
    """Any of: optimizer options, loss options, a batch transform, a penalty term, backbone options.

    Every method has a no-op default; a regularizer overrides the one or two it needs (Optuna's
    pattern for optional hooks). Several regularizers can be active in one trial; their
    ``optimizer_options``/``loss_options``/``backbone_options`` are merged (a key claimed by two
    regularizers is a configuration error), batch transforms run in order, penalties add up.

    ``uses_inputs``: True when the regularizer needs real images in each step (a batch transform,
    or a penalty on the model's own activations). Such a regularizer disables the feature cache.

    ``calibration_images``: how many training images :meth:`calibrate` wants once before training
    (0, the default: it is not called). DELTA uses them for its channel attention.

    ``needs_trainable_backbone``: True when the regularizer changes nothing worth its cost unless
    the backbone trains (L2-SP and DELTA pull trained backbone weights or features back; BSS on
    fixed features is a constant; mixup and cutmix would turn a probe's feature cache off). The
    search then never samples it together with a freezing strategy that keeps the backbone frozen
    (:meth:`applies_to`), so no trial is spent on a combination that only differs in name.
    """

    kind: ClassVar[str] = "regularizer"
    uses_inputs: ClassVar[bool] = False
    calibration_images: ClassVar[int] = 0
    needs_trainable_backbone: ClassVar[bool] = False

    @classmethod
    def applies_to(cls, strategy: FreezingStrategy) -> bool:
        """Whether this regularizer has an effect under ``strategy`` (an instance, with the trial's
        hyperparameters: ``freeze_stages`` at fraction 1 freezes the whole backbone). The sampler
        skips a regularizer for which this is False: it is off in that trial and its
        hyperparameters are not sampled. Default: False only when :attr:`needs_trainable_backbone`
        and ``strategy.backbone_frozen``; override for a finer rule."""
        return not (cls.needs_trainable_backbone and strategy.backbone_frozen)

    def backbone_options(self) -> dict[str, Any]:
        """Options passed to ``Backbone.build`` (e.g. ``{"drop_path_rate": 0.1}``)."""
        return {}

    def optimizer_options(self) -> dict[str, Any]:
        """Options for the optimizer (e.g. ``{"weight_decay": 0.05}``, decoupled as in AdamW).

        Valid keys: :data:`OPTIMIZER_OPTIONS`; any other key is a config error when the study is read.
        """
        return {}

    def loss_options(self) -> dict[str, Any]:
        """Options for the classification loss (e.g. ``{"label_smoothing": 0.1}``), read by
        :func:`tlsearch.train.losses.classification_loss` (what each key means).

        Valid keys: :data:`LOSS_OPTIONS`; a regularizer that returns some declares
        ``tasks = ("classification",)``, since the regression losses take none.
        """
        return {}

    def class_sampling_weights(self, counts: torch.Tensor) -> torch.Tensor | None:
        """Classification: per-class weights ``(C,)`` to sample training images by, given the
        training images per class ``counts``; None (the default) keeps plain shuffled epochs.

        When a regularizer returns weights, each epoch draws ``len(train)`` images with replacement,
        image ``i`` with probability ∝ ``weights[target_i]`` (the ``balanced_sampler`` built-in).
        The first regularizer that returns weights decides. A head solved by L-BFGS ignores it.
        """
        return None

    def replaces_weight_decay(self, model: TransferModel) -> Iterable[nn.Parameter]:
        """Parameters this regularizer regularizes instead of plain weight decay, which then skips them.

        Called after :meth:`setup`. L2-SP returns the backbone's parameters: it pulls them toward
        their pretrained values θ0, and decaying them toward 0 as well would contradict it.
        Default: none.
        """
        return ()

    def setup(self, model: TransferModel, *, num_outputs: int, task: str) -> None:  # noqa: B027
        """Before training (e.g. keep a copy of the starting weights θ0 for L2-SP)."""

    def calibrate(  # noqa: B027
        self,
        model: TransferModel,
        *,
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        num_outputs: int,
        task: str,
    ) -> None:
        """Once, after :meth:`setup` and before the first step, when ``calibration_images > 0``:
        up to that many training images at the starting weights, as ``(inputs, targets)`` batches on
        the training device. Inputs are normalised and not augmented (the pooled features instead,
        when the trial trains on cached features); targets are what the loss sees (class indices, or
        standardised regression values)."""

    def transform_batch(
        self, images: torch.Tensor, targets: torch.Tensor, *, num_outputs: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform a training batch on its device (mixup, cutmix).

        ``targets`` are class indices ``(N,)`` or already-soft ``(N, C)`` probabilities; a transform
        that mixes labels returns soft ``(N, C)`` targets.
        """
        return images, targets

    def penalty(
        self, model: TransferModel, *, images: torch.Tensor | None, features: torch.Tensor
    ) -> torch.Tensor | None:
        """An extra loss term for this step, or None. ``features`` are the pooled backbone features;
        ``images`` is None when training on cached features."""
        return None

    def teardown(self, model: TransferModel) -> None:  # noqa: B027
        """After training (remove hooks added in :meth:`setup`)."""
