"""Decision thresholds for the exported model, tuned on the whole validation split after the search.

* **multilabel**: one threshold per label maximising that label's F1
  (:func:`tlsearch.train.thresholds.f1_thresholds`, whose docstring states the rule);
* **binary classification**, when the study asks (``export.target_precision`` or
  ``export.target_recall``): one threshold on the positive class's softmax probability, the lowest
  reaching the target precision (recall as high as it goes there) or the highest reaching the
  target recall. The positive class is ``export.positive_label``, by default the second class
  (scikit-learn's ``pos_label=1`` for sorted labels). No threshold reaches the target: the export
  stops with the best the validation split allows, since a silent 0.5 would break the promise.

The thresholds go into the ONNX metadata and ``model.json`` (``thresholds``, one per label; for a
binary model ``[1 - t, t]`` is not used: ``thresholds`` holds ``t`` for the positive class only,
with ``positive_label``), and :class:`tlsearch.deploy.Predictor` applies them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tlsearch.errors import ConfigError, ExportError
from tlsearch.preprocessing import normalize

if TYPE_CHECKING:
    from torch import nn

    from tlsearch.config import StudyConfig
    from tlsearch.data import DecodedImages, ImageList

__all__ = ["check_decision_settings", "decision_metadata"]


def check_decision_settings(config: StudyConfig, train: ImageList) -> None:
    """Before any trial: a target precision/recall needs exactly two classes, and a
    ``positive_label`` must be one of them."""
    export = config.export
    if export.target_precision is None and export.target_recall is None:
        return
    classes = train.classes or []
    where = f"{config.source or '<study>'}: export"
    if len(classes) != 2:
        raise ConfigError(
            f"{where}.target_{'precision' if export.target_precision is not None else 'recall'} needs "
            f"binary classification; the data has {len(classes)} classes ({', '.join(classes[:10])})"
        )
    if export.positive_label is not None and export.positive_label not in classes:
        raise ConfigError(
            f"{where}.positive_label {export.positive_label!r} is not a class; valid choices: "
            f"{', '.join(classes)}"
        )


@torch.inference_mode()
def _outputs(model: nn.Module, images: DecodedImages, *, config: Any, batch_size: int = 64) -> torch.Tensor:
    model = model.cpu().eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(normalize(images.images[start : start + batch_size], config))
        out.append(model(x).float())
    return torch.cat(out)


def decision_metadata(
    model: nn.Module, val: DecodedImages, *, config: StudyConfig, preprocessing: Any, labels: list[str]
) -> dict[str, Any]:
    """The metadata entries of the tuned thresholds (empty when the study has none to tune):
    ``thresholds``, ``threshold_rule`` and, for multilabel, ``threshold_metrics`` (the validation
    metrics at those thresholds)."""
    from tlsearch.train.metrics import multilabel_metrics
    from tlsearch.train.thresholds import f1_thresholds, threshold_for_precision, threshold_for_recall

    export = config.export
    if config.task == "multilabel":
        probabilities = torch.sigmoid(_outputs(model, val, config=preprocessing))
        targets = torch.from_numpy(np.asarray(val.targets, dtype=np.float32))
        thresholds = f1_thresholds(probabilities, targets)
        return {
            "thresholds": [float(t) for t in thresholds],
            "threshold_rule": f"per-label F1 maximum on the {len(val)} validation images",
            "threshold_metrics": multilabel_metrics(probabilities, targets, thresholds=thresholds),
        }
    if config.task != "classification" or (export.target_precision is None and export.target_recall is None):
        return {}
    positive = export.positive_label or labels[1]
    index = labels.index(positive)
    probabilities = torch.softmax(_outputs(model, val, config=preprocessing), dim=1)[:, index]
    truth = torch.from_numpy(np.asarray(val.targets) == index).float()
    if export.target_precision is not None:
        target, what = export.target_precision, "precision"
        threshold = threshold_for_precision(probabilities, truth, target=target)
    else:
        target, what = float(export.target_recall or 0), "recall"
        threshold = threshold_for_recall(probabilities, truth, target=target)
    if threshold is None:
        raise ExportError(
            f"no threshold reaches export.target_{what} {target} for class {positive!r} on the "
            f"{len(val)} validation images; lower the target or improve the model"
        )
    return {
        "thresholds": [float(threshold)],
        "positive_label": positive,
        "threshold_rule": f"target {what} {target} for {positive!r} on the {len(val)} validation images",
    }
