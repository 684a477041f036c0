"""What an epoch costs in work (GFLOP), not in seconds: the same trial costs the same on a busy machine.

Cost-aware pruning (:mod:`tlsearch.search.pruning`) compares trials by what an epoch costs. Wall-clock
seconds depend on the machine's load: one trial slowed by a busy machine made every later trial look
cheap. The work of an epoch depends only on the trial::

    train images × (backbone forward + 2 × trainable fraction × backbone forward + 3 × head)
    + val images × (backbone forward + head)

The backbone's forward FLOPs per image are its ``gflops`` fact (``model.info``, counted once per
architecture and input size by the backbone plugin), else ``2 × params`` (a dense layer's count);
backward costs about twice the forward of the part that trains, approximated by the fraction of
the backbone's parameters that train this epoch; a head costs ``2 × params`` per image forward. On
cached features (a frozen backbone whose features are computed once for all trials) an epoch costs
only the head's work.
"""

from __future__ import annotations

from tlsearch.kinds import TransferModel


def backbone_gflops(model: TransferModel) -> float:
    """Forward GFLOP per image of ``model``'s backbone: its ``gflops`` fact, else ``2 × params``."""
    value = model.info.get("gflops")
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    return 2.0 * sum(p.numel() for p in model.backbone.parameters()) / 1e9


def epoch_work(model: TransferModel, *, train_images: int, val_images: int, cached: bool) -> float:
    """GFLOP of one epoch of ``model`` as it trains now (its ``requires_grad`` flags decide what
    trains): training on ``train_images``, then evaluating ``val_images``. See the module doc."""
    head = 2.0 * sum(p.numel() for p in model.head.parameters()) / 1e9
    if cached:
        return train_images * 3 * head + val_images * head
    params = [p for p in model.backbone.parameters()]
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad) / total if total else 0.0
    forward = backbone_gflops(model)
    return train_images * (forward * (1 + 2 * trainable) + 3 * head) + val_images * (forward + head)
