"""Regression end to end: CSV of path + target, Huber loss, R²/MAE, an exported model that outputs the value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tlsearch.demo import make_sizes
from tlsearch.registry import get_plugin_manager
from tlsearch.search import export_study, load_checkpoint, run_study

pytestmark = pytest.mark.slow


def test_regression_study_exports_a_model_that_outputs_values(tmp_path: Path) -> None:
    from tlsearch.deploy import Predictor
    from tlsearch.preprocessing import normalize, prepare_image

    csv = make_sizes(tmp_path / "sizes", n=48, size=32, seed=0)
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "sizes",
                "task": "regression",
                "data": {"csv": str(csv), "val_fraction": 0.25, "image_size": 32},
                "space": {
                    "backbone": {"timm": {"model": "test_resnet", "weights": "random"}},
                    "head": ["regression"],
                    "freezing": ["full_finetune"],
                },
                "training": {"epochs": 2, "batch_size": 12, "loss": "huber", "lr": 3e-3},
                "search": {"n_trials": 2, "metric": "mae"},
                "export": {"enabled": False},
            }
        )
    )
    result = run_study(study, out_dir=tmp_path / "out", progress=False)
    trials = result.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], [
        t.user_attrs.get("failure") for t in trials
    ]
    metrics = trials[0].user_attrs["metrics"]
    assert {"r2", "mae", "val_loss"} <= set(metrics)
    assert result.study.direction.name == "MINIMIZE"  # mae: lower is better
    assert trials[0].value == pytest.approx(metrics["mae"])

    report = export_study(tmp_path / "out", pm=result.pm)
    predictor = Predictor(report.path)
    assert predictor.task == "regression"
    files = sorted((tmp_path / "sizes" / "images").glob("*.png"))[:5]
    values = np.array([p.values for p in predictor.predict(files)])
    assert values.shape == (5, 1)

    model, record = load_checkpoint(
        tmp_path / "out" / "trials" / f"{result.study.best_trial.number:04d}", get_plugin_manager().registry
    )
    x = np.stack([prepare_image(f, record.preprocessing) for f in files])
    with torch.no_grad():
        expected = model(torch.from_numpy(normalize(x, record.preprocessing))).numpy()
    np.testing.assert_allclose(values, expected, atol=1e-4)
