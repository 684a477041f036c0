"""Training one trial: the loop, the device and precision policy, the feature cache, metrics."""

from tlsearch.train.best import StopTraining
from tlsearch.train.compiling import CompileDecision, CompileProfile, decide_compile
from tlsearch.train.device import (
    Precision,
    configure_backends,
    is_convolutional,
    resolve_device,
    resolve_precision,
    use_channels_last,
)
from tlsearch.train.features import (
    FeatureCache,
    backbone_identity,
    feature_key,
    trial_backbone_identity,
    weights_fingerprint,
)
from tlsearch.train.loop import FitResult, NonFiniteError, Trainer
from tlsearch.train.metrics import evaluate_outputs
from tlsearch.train.optim import apply_lr, build_optimizer, merge_options, schedule_factor
from tlsearch.train.settings import TrainSettings
from tlsearch.train.targets import TargetScale

__all__ = [
    "CompileDecision",
    "CompileProfile",
    "FeatureCache",
    "FitResult",
    "NonFiniteError",
    "Precision",
    "StopTraining",
    "TargetScale",
    "TrainSettings",
    "Trainer",
    "apply_lr",
    "backbone_identity",
    "build_optimizer",
    "configure_backends",
    "decide_compile",
    "evaluate_outputs",
    "feature_key",
    "is_convolutional",
    "merge_options",
    "resolve_device",
    "resolve_precision",
    "schedule_factor",
    "trial_backbone_identity",
    "use_channels_last",
    "weights_fingerprint",
]
