"""Binary classification with a decision threshold tuned for a target recall (issue 16 part 4):
in the metadata, applied by the Predictor; refused before any trial when the data is not binary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tlsearch.demo import make_shapes
from tlsearch.errors import ConfigError
from tlsearch.search import export_study, run_study

pytestmark = pytest.mark.slow


def _study(tmp_path: Path, data: Path, **export: object) -> Path:
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "binary",
                "data": {"train": str(data / "train"), "val": str(data / "val"), "image_size": 32},
                "space": {
                    "backbone": {"timm": {"model": "test_resnet", "weights": "random"}},
                    "head": ["linear"],
                    "freezing": ["full_finetune"],
                },
                "training": {"epochs": 1, "batch_size": 8, "lr": 3e-3},
                "search": {"n_trials": 1, "warm_start": False},
                "export": {"enabled": False, "soup": False, **export},
            }
        )
    )
    return study


def test_a_target_recall_threshold_is_tuned_exported_and_applied(tmp_path: Path) -> None:
    from tlsearch.data import decode_images, load_splits
    from tlsearch.deploy import Predictor
    from tlsearch.preprocessing import normalize
    from tlsearch.registry import get_plugin_manager
    from tlsearch.search import load_checkpoint
    from tlsearch.search.study_dir import StudyDir
    from tlsearch.train.thresholds import threshold_for_recall

    data = make_shapes(
        tmp_path / "data", per_class=10, val_per_class=8, size=32, classes=("circle", "square")
    )
    study = _study(tmp_path, data, target_recall=0.9, positive_label="circle")
    result = run_study(study, out_dir=tmp_path / "out", progress=False)
    report = export_study(tmp_path / "out", pm=result.pm)
    meta = json.loads(report.model_json.read_text())["metadata"]
    assert meta["positive_label"] == "circle" and len(meta["thresholds"]) == 1

    config = StudyDir(tmp_path / "out").load_config()
    _, val = load_splits(config.data, task="classification", seed=0, resolve=config.resolve_path)
    model, record = load_checkpoint(tmp_path / "out" / "trials" / "0000", get_plugin_manager().registry)
    decoded = decode_images(val, record.preprocessing, progress=False)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(normalize(decoded.images, record.preprocessing)))
    p_circle = torch.softmax(logits, dim=1)[:, 0]
    truth = torch.from_numpy(decoded.targets == 0).float()
    expected = threshold_for_recall(p_circle, truth, target=0.9)
    assert expected is not None
    assert meta["thresholds"][0] == pytest.approx(expected, abs=1e-6)
    recall = float(((p_circle >= meta["thresholds"][0]).float() * truth).sum() / truth.sum())
    assert recall >= 0.9

    predictor = Predictor(report.path)
    results = predictor.predict(list(val.paths))
    for r in results:
        probability = dict((label, p) for label, _, p in r.top_k)["circle"]
        decided = "circle" if probability >= meta["thresholds"][0] else "square"
        assert r.labels is not None and r.labels[0][0] == decided
    assert np.isclose(sum(p for _, _, p in results[0].top_k), 1.0)


def test_a_target_precision_on_four_classes_is_refused_before_any_trial(tmp_path: Path) -> None:
    data = make_shapes(tmp_path / "data", per_class=3, val_per_class=2, size=16)
    study = _study(tmp_path, data, target_precision=0.9)
    with pytest.raises(ConfigError) as err:
        run_study(study, out_dir=tmp_path / "out", progress=False)
    assert "target_precision" in str(err.value) and "4 classes" in str(err.value)
    assert not (tmp_path / "out").exists()
    study = _study(
        tmp_path,
        make_shapes(tmp_path / "two", per_class=3, val_per_class=2, size=16, classes=("circle", "star")),
        target_recall=0.5,
        positive_label="dog",
    )
    with pytest.raises(ConfigError) as err:
        run_study(study, out_dir=tmp_path / "out", progress=False)
    assert "'dog'" in str(err.value) and "circle, star" in str(err.value)
