"""Pieces of the multi-label export and training, driven directly: the parity check on label sets,
a plain ``export_onnx`` of a multi-label model, and mixup / cutmix mixing label vectors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tlsearch_builtins.regularizers import CutMix, Mixup
from torch import nn

from tlsearch.deploy import Predictor
from tlsearch.errors import ExportError
from tlsearch.export import export_onnx
from tlsearch.export._parity import compare
from tlsearch.preprocessing import DataConfig


def test_compare_checks_label_sets_at_the_thresholds_not_top1() -> None:
    reference = np.array([[0.9, 0.2, 0.55], [0.1, 0.8, 0.3]])
    thresholds = np.array([0.5, 0.5, 0.5])
    same_sets = reference + np.array([[0.0, 0.2, 0.0], [0.0, -0.1, 0.1]])  # top-1 changes, sets do not
    assert (
        compare(reference, same_sets, task="multilabel", what="x", thresholds=thresholds).top1_agreement
        == 1.0
    )
    crossed = reference.copy()
    crossed[0, 2] = 0.45  # label 2 of image 0 leaves the set
    result = compare(reference, crossed, task="multilabel", what="x", thresholds=thresholds)
    assert result.top1_agreement == 0.5 and "label-set agreement 50.0%" in result.describe()
    # a score within the tolerated difference of its threshold may cross it legitimately
    tight = np.array([0.5, 0.5, 0.549])
    assert (
        compare(reference, crossed, task="multilabel", what="x", thresholds=tight, margin=0.01).top1_agreement
        == 1.0
    )
    assert compare(reference, crossed, task="multilabel", what="x", thresholds=tight).top1_agreement == 0.5


def test_compare_defaults_to_the_half_threshold_and_agrees_on_no_images() -> None:
    """Bugs caught: no thresholds given not meaning 0.5 for each label; an empty comparison not
    agreeing (it has nothing to disagree on)."""
    reference = np.array([[0.6, 0.4], [0.2, 0.9]])
    crossed = np.array([[0.45, 0.4], [0.2, 0.9]])  # 0.6 -> 0.45 crosses 0.5
    assert compare(reference, crossed, task="multilabel", what="x").top1_agreement == 0.5
    assert compare(reference, reference + 0.05, task="multilabel", what="x").top1_agreement == 1.0
    empty = np.zeros((0, 2))
    assert compare(empty, empty, task="multilabel", what="x").top1_agreement == 1.0


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.data_config = DataConfig(input_size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3))) * 3.0


def test_export_onnx_writes_probabilities_and_the_predictor_applies_the_thresholds(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Tiny().eval()
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    meta = {"task": "multilabel", "labels": ["a", "b", "c"], "thresholds": [0.3, 0.5, 0.7]}
    report = export_onnx(model, path=tmp_path / "m.onnx", metadata=meta, validation_images=images)
    written = json.loads(report.model_json.read_text())
    assert written["metadata"]["thresholds"] == [0.3, 0.5, 0.7]
    assert written["verification"]["top1_agreement"] == 1.0
    predictor = Predictor(report.path)
    with torch.no_grad():
        from tlsearch.preprocessing import normalize

        prepared = np.stack([predictor.prepare(image) for image in images])  # the predictor's pixels
        expected = torch.sigmoid(model(torch.from_numpy(normalize(prepared, model.data_config)))).numpy()
    for result, row in zip(predictor.predict(list(images)), expected, strict=True):
        chosen = {name for name, p, t in zip("abc", row, [0.3, 0.5, 0.7], strict=True) if p >= t}
        assert {label for label, _, _ in result.labels or []} == chosen
        assert [p for _, _, p in result.top_k] == pytest.approx(sorted(row, reverse=True), abs=1e-5)


def test_thresholds_that_do_not_fit_the_labels_are_refused(tmp_path: Path) -> None:
    model = _Tiny().eval()
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    for bad in ([0.5, 0.5], [0.5, 1.5, 0.5], "0.5"):
        meta = {"task": "multilabel", "labels": ["a", "b", "c"], "thresholds": bad}
        with pytest.raises(ExportError, match="thresholds must be a list"):
            export_onnx(model, path=tmp_path / "m.onnx", metadata=meta, validation_images=images)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("regularizer", [Mixup(alpha=0.4, prob=1.0), CutMix(alpha=1.0, prob=1.0)])
def test_mixing_regularizers_mix_label_vectors(regularizer: Mixup) -> None:
    """The label vectors mix with the λ and partners the images mixed with (replayed from the seed)."""
    images = torch.rand(8, 3, 16, 16)
    targets = (torch.rand(8, 5) < 0.4).float()
    torch.manual_seed(3)
    lam, perm = regularizer._draw(8, images.device)
    if isinstance(regularizer, CutMix):
        top, bottom, left, right = regularizer.box(lam, 16, 16)
        lam = 1.0 - (bottom - top) * (right - left) / 256
    torch.manual_seed(3)
    _, soft = regularizer.transform_batch(images, targets, num_outputs=5)
    assert soft.shape == (8, 5) and soft.dtype == torch.float32
    torch.testing.assert_close(soft, lam * targets + (1 - lam) * targets[perm])
    assert not torch.equal(soft, targets)


class _CrossesItsThresholdWhenExported(nn.Module):
    """Probabilities 0.32, 0.9, 0.1; the exported graph moves the first to 0.28: across its 0.3
    threshold, though not across the default 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.data_config = DataConfig(input_size=8)
        self.conv = nn.Conv2d(3, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.tensor([0.32, 0.9, 0.1])
        logits = self.conv(x).mean(dim=(2, 3)) * 0.0 + torch.log(p / (1 - p))
        if torch.onnx.is_in_onnx_export():
            logits = logits + torch.tensor([math.log(0.28 / 0.72) - math.log(0.32 / 0.68), 0.0, 0.0])
        return logits


def test_the_export_check_compares_label_sets_at_the_models_own_thresholds(tmp_path: Path) -> None:
    """Bug caught: the parity check's label sets taken at the default 0.5 instead of the metadata's
    thresholds (the multilabel test inverted, or the metadata dropped): the refusal then reports
    every label set as agreeing."""
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    meta = {"task": "multilabel", "labels": ["a", "b", "c"], "thresholds": [0.3, 0.5, 0.5]}
    with pytest.raises(ExportError, match=r"label-set agreement 0\.0%"):
        export_onnx(
            _CrossesItsThresholdWhenExported().eval(),
            path=tmp_path / "m.onnx",
            metadata=meta,
            validation_images=images,
            exporter="torchscript",
        )
