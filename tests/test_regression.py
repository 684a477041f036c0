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
    assert {"r2", "mae", "rmse", "val_loss"} <= set(metrics)
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
    assert record.scale is not None  # the weights output standardised values
    with torch.no_grad():
        expected = record.scale.restore(model(torch.from_numpy(normalize(x, record.preprocessing)))).numpy()
    np.testing.assert_allclose(values, expected, atol=1e-4)


def _brightness_study(tmp_path: Path, *, n: int = 40, size: int = 24) -> tuple[Path, np.ndarray]:
    """Flat grey images whose target is ``1000 + 500 · brightness``: targets in the thousands."""
    from PIL import Image

    folder = tmp_path / "bright"
    (folder / "images").mkdir(parents=True)
    brightness = np.random.default_rng(0).uniform(0, 1, n)
    rows = ["path,price"]
    for i, b in enumerate(brightness):
        Image.fromarray(np.full((size, size, 3), int(b * 255), np.uint8)).save(
            folder / "images" / f"{i:03d}.png"
        )
        rows.append(f"images/{i:03d}.png,{1000 + 500 * b:.4f}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "bright",
                "task": "regression",
                "data": {"csv": str(folder / "labels.csv"), "val_fraction": 0.25, "image_size": size},
                "space": {
                    "backbone": {"timm": {"model": "test_resnet", "weights": "random"}},
                    "head": ["regression"],
                    "freezing": ["full_finetune"],
                },
                "training": {"epochs": 3, "batch_size": 10, "loss": "huber", "lr": 1e-2},
                "search": {"n_trials": 1, "metric": "mae"},
                "export": {"enabled": False},
            }
        )
    )
    return study, 1000 + 500 * brightness


def test_targets_in_the_thousands_train_standardised_and_export_in_original_units(tmp_path: Path) -> None:
    """The study standardises with the training split's mean/std, keeps them in the checkpoint and the
    ONNX metadata, and the exported model, Predictor and the metrics speak the targets' units."""
    import json

    import onnxruntime as ort

    from tlsearch.data import load_splits
    from tlsearch.deploy import Predictor
    from tlsearch.preprocessing import normalize, prepare_image
    from tlsearch.search.study_dir import StudyDir

    study, targets = _brightness_study(tmp_path)
    result = run_study(study, out_dir=tmp_path / "out", progress=False)
    trial = result.study.trials[0]
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("failure")

    config = StudyDir(tmp_path / "out").load_config()
    train, _ = load_splits(config.data, task="regression", seed=0, resolve=config.resolve_path)
    train_y = np.asarray(train.targets, dtype=np.float64)
    model, record = load_checkpoint(tmp_path / "out" / "trials" / "0000", get_plugin_manager().registry)
    assert record.target_scale is not None
    assert record.target_scale["mean"] == pytest.approx([train_y.mean()])  # training split only
    assert record.target_scale["std"] == pytest.approx([train_y.std()])
    # metrics in the targets' units: an untrained-ish model errs by tens or hundreds, not by ~1
    assert 1.0 < trial.user_attrs["metrics"]["mae"] < 500.0
    assert trial.user_attrs["metrics"]["rmse"] >= trial.user_attrs["metrics"]["mae"]

    report = export_study(tmp_path / "out", pm=result.pm)
    meta = json.loads(report.model_json.read_text())["metadata"]
    assert meta["target_scale"] == {**record.target_scale, "in_graph": True}
    onnx_meta = json.loads(
        ort.InferenceSession(str(report.path)).get_modelmeta().custom_metadata_map["tlsearch"]
    )
    assert onnx_meta["target_scale"]["in_graph"] is True

    files = sorted((tmp_path / "bright" / "images").glob("*.png"))[:6]
    values = np.array([p.values for p in Predictor(report.path).predict(files)])
    assert np.all((values > 500) & (values < 2000)), values  # original units, scale applied once
    x = np.stack([prepare_image(f, record.preprocessing) for f in files])
    with torch.no_grad():
        standard = model(torch.from_numpy(normalize(x, record.preprocessing)))
    np.testing.assert_allclose(values, record.scale.restore(standard).numpy(), rtol=1e-4)  # type: ignore[union-attr]
