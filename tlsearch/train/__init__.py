"""Training one trial: the loop, the device and precision policy, metrics."""

from tlsearch.train.device import Precision, resolve_device, resolve_precision
from tlsearch.train.loop import (
    FitResult,
    NonFiniteError,
    Trainer,
    TrainSettings,
    apply_lr,
    build_optimizer,
    merge_options,
)
from tlsearch.train.metrics import evaluate_outputs

__all__ = [
    "FitResult",
    "NonFiniteError",
    "Precision",
    "TrainSettings",
    "Trainer",
    "apply_lr",
    "build_optimizer",
    "evaluate_outputs",
    "merge_options",
    "resolve_device",
    "resolve_precision",
]
