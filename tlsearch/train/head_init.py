"""A head's optional data-aware initialisation: ``init_from_data(features, targets)``.

Heads are built from sizes alone (:meth:`tlsearch.kinds.Head.build`), before any image is seen. A
head *module* that defines ``init_from_data`` is given, once per trial, the pooled backbone
features of every training image and their targets, before the first step: a nearest-class-mean
head sets its class weights to the class means, a regression head its bias to the targets' mean.
See :class:`tlsearch.kinds.Head` for the contract.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tlsearch.kinds import TransferModel


def init_head_from_data(
    model: TransferModel, *, features: Callable[[], torch.Tensor], targets: np.ndarray
) -> bool:
    """Call ``model.head.init_from_data(features, targets)`` when the head defines it; True if it did.

    ``features()`` computes the training set's pooled features in order (un-augmented, eval mode;
    only called when the head wants them, since it costs a pass over the training images);
    ``targets`` are what the loss sees (class indices, or standardised regression values). The call
    runs under ``torch.no_grad()`` with ordinary tensors (not inference-mode ones), on the
    training device, so the head may copy them into its parameters.
    """
    init = getattr(model.head, "init_from_data", None)
    if not callable(init):
        return False
    values = features().float().clone()  # a clone outside inference mode: an ordinary tensor
    labels = torch.as_tensor(np.asarray(targets)).to(values.device)
    with torch.no_grad():
        init(values, labels)
    return True
