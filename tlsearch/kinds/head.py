"""Heads: the new layers trained on top of a backbone's features."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from torch import nn

from tlsearch.kinds._base import Plugin


class Head(Plugin):
    """Maps ``(N, in_features)`` features to ``(N, out_features)`` outputs (class logits, or values for regression).

    Required: :meth:`build`. ``in_features`` is the backbone's ``num_features`` (the width of its
    pooled features); ``out_features`` the number of classes, or of regression targets (often 1).

    **Data-aware initialisation (optional).** ``build`` sees sizes only: a head is built before any
    image is read (also for export and resume, which then load trained weights into it). A head
    that should start from the data (a nearest-class-mean head: class weights = class means of the
    features) gives the *module* ``build`` returns a method::

        def init_from_data(self, features: torch.Tensor, targets: torch.Tensor) -> None: ...

    The trainer calls it once per trial, before the first step (after the freezing strategy's
    ``setup`` and before the regularizers' ``calibrate``), under ``torch.no_grad()``, with the
    pooled backbone features of every training image ``(N, in_features)`` (float32, un-augmented,
    at the starting backbone weights, on the training device; the cached features when the trial
    uses the feature cache) and their targets as the loss sees them (class indices ``(N,)``, or
    standardised regression values ``(N, out_features)``). It must be the returned module's own
    method (not a submodule's): wrap dropout inside your module. Without the feature cache it costs
    one forward pass over the training images. Export and resume never call it.
    """

    kind: ClassVar[str] = "head"

    @abstractmethod
    def build(self, in_features: int, out_features: int) -> nn.Module:
        """Create the head module (its weights drawn from torch's generator, which the trial seeds)."""
