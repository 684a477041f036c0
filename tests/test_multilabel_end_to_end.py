"""Multi-label end to end on a tiny local model and synthetic several-shapes images: CSV → BCE
training (mixup mixing label vectors) → mAP → thresholds tuned after the search → ONNX with sigmoid
outputs, verified → Predictor and ``tlsearch predict`` returning label sets with scores."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from tlsearch.demo import make_multilabel_shapes
from tlsearch.registry import get_plugin_manager
from tlsearch.search import export_study, load_checkpoint, run_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("multilabel")
    csv = make_multilabel_shapes(tmp / "data", n=60, size=32, seed=0)
    test_csv = make_multilabel_shapes(tmp / "test", n=12, size=32, seed=1)
    study = tmp / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "ml",
                "task": "multilabel",
                "data": {"csv": str(csv), "val_fraction": 0.3, "image_size": 32, "test": str(test_csv)},
                "space": {
                    "backbone": {"timm": {"model": "test_resnet", "weights": "random"}},
                    "head": ["linear"],
                    "freezing": ["full_finetune"],
                    "regularizers": {
                        "mixup": {"enabled": True},
                        "class_weights": {"enabled": True, "scheme": "inverse"},
                        "focal_loss": {"enabled": True, "gamma": 1.0},
                    },
                },
                "training": {"epochs": 2, "batch_size": 12, "lr": 3e-3},
                "search": {"n_trials": 1, "warm_start": False},
                "export": {"enabled": False, "soup": False},
            }
        )
    )
    result = run_study(study, out_dir=tmp / "out", progress=False)
    report = export_study(tmp / "out", pm=result.pm)
    return {"tmp": tmp, "csv": csv, "result": result, "report": report}


def test_trials_score_map_and_record_every_multilabel_metric(exported: dict) -> None:
    trial = exported["result"].study.trials[0]
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("failure")
    metrics = trial.user_attrs["metrics"]
    assert {"map", "micro_f1", "macro_f1", "log_loss", "val_loss"} <= set(metrics)
    assert trial.value == pytest.approx(metrics["map"])  # map is the default metric
    assert metrics["val_loss"] == pytest.approx(metrics["log_loss"], rel=1e-4)  # plain BCE
    # the multi-label class weights and focal loss trained (mixed label vectors) alongside mixup
    assert {"class_weights", "focal_loss", "mixup"} <= set(trial.user_attrs["plugins"]["regularizers"])
    assert exported["result"].study.direction.name == "MAXIMIZE"
    rows = trial.user_attrs["per_class"]
    assert [r["class"] for r in rows] == ["circle", "square", "star", "triangle"]
    assert all({"support", "precision", "recall", "f1", "ap", "threshold"} <= set(r) for r in rows)
    assert min(r["ap"] for r in rows) >= 0.0


def test_the_export_outputs_sigmoid_probabilities_with_tuned_thresholds(exported: dict) -> None:
    import onnxruntime as ort

    from tlsearch.data import decode_images, load_splits
    from tlsearch.preprocessing import normalize
    from tlsearch.search.study_dir import StudyDir
    from tlsearch.train.thresholds import f1_thresholds

    report = exported["report"]
    meta = json.loads(report.model_json.read_text())["metadata"]
    assert meta["task"] == "multilabel" and meta["outputs"] == "sigmoid_probabilities"
    assert meta["labels"] == ["circle", "square", "star", "triangle"]
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == "probabilities"
    assert report.top1_agreement == 1.0  # the label sets at the thresholds agree on every image

    # the thresholds are f1_thresholds of the shipped weights on the whole validation split
    out = exported["tmp"] / "out"
    config = StudyDir(out).load_config()
    _, val = load_splits(config.data, task="multilabel", seed=0, resolve=config.resolve_path)
    model, record = load_checkpoint(out / "trials" / "0000", get_plugin_manager().registry)
    decoded = decode_images(val, record.preprocessing, progress=False)
    x = normalize(decoded.images, record.preprocessing)
    with torch.no_grad():
        probabilities = torch.sigmoid(model.eval()(torch.from_numpy(x)))
    expected = f1_thresholds(probabilities, torch.from_numpy(decoded.targets))
    np.testing.assert_allclose(meta["thresholds"], expected.numpy(), atol=1e-6)
    onnx_out = session.run(None, {"input": x})[0]
    np.testing.assert_allclose(onnx_out, probabilities.numpy(), atol=1e-4)  # probabilities, not logits
    assert onnx_out.min() >= 0.0 and onnx_out.max() <= 1.0


def test_predictor_and_cli_return_label_sets_at_the_thresholds(exported: dict) -> None:
    import onnxruntime as ort

    from tlsearch.cli import main
    from tlsearch.deploy import Predictor
    from tlsearch.preprocessing import normalize, prepare_image

    report = exported["report"]
    predictor = Predictor(report.path)
    assert predictor.task == "multilabel"
    files = sorted((exported["tmp"] / "data" / "images").glob("*.png"))[:8]
    results = predictor.predict(files, top_k=2)
    meta = json.loads(report.model_json.read_text())["metadata"]
    thresholds = np.asarray(meta["thresholds"])
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = normalize(np.stack([prepare_image(f, predictor.data_config) for f in files]), predictor.data_config)
    probabilities = session.run(None, {"input": x})[0]
    for result, row in zip(results, probabilities, strict=True):
        expected = {meta["labels"][j] for j in range(len(row)) if row[j] >= thresholds[j]}
        assert result.labels is not None
        assert {label for label, _, _ in result.labels} == expected
        for _, index, p in result.labels:
            assert p == pytest.approx(float(row[index]), abs=1e-6)
        assert len(result.top_k) == 2 and result.top_k[0][2] >= result.top_k[1][2]
    cli = CliRunner().invoke(main, ["predict", str(report.path), str(files[0]), "--json"])
    assert cli.exit_code == 0, cli.output
    printed = json.loads(cli.output)[0]
    assert [d["label"] for d in printed["labels"]] == [label for label, _, _ in results[0].labels]
    csv_out = CliRunner().invoke(main, ["predict", str(report.path), *map(str, files[:3]), "--csv"])
    assert csv_out.exit_code == 0, csv_out.output
    lines = csv_out.output.strip().splitlines()
    assert lines[0] == "path,label,index,probability,error"
    predicted_rows = sum(max(1, len(r.labels or [])) for r in results[:3])
    assert len(lines) - 1 == predicted_rows


def test_the_int8_gate_measures_map_on_the_validation_labels(exported: dict) -> None:
    import onnxruntime as ort
    from sklearn.metrics import average_precision_score

    from tlsearch.data import decode_images, load_splits
    from tlsearch.preprocessing import DataConfig, normalize
    from tlsearch.search import quantize_study
    from tlsearch.search.study_dir import StudyDir

    out = exported["tmp"] / "out"
    with warnings.catch_warnings():  # a tiny random model may lose more than 1 pp: warned, kept
        warnings.simplefilter("ignore")
        report = quantize_study(out, on_drop="warn")
    assert report.metric == "map" and report.labels_used
    config = StudyDir(out).load_config()
    _, val = load_splits(config.data, task="multilabel", seed=0, resolve=config.resolve_path)
    meta = json.loads(exported["report"].model_json.read_text())["metadata"]
    preprocessing = DataConfig.from_dict(meta["data_config"])
    decoded = decode_images(val, preprocessing, progress=False)
    x = normalize(decoded.images, preprocessing)
    for path, value in ((exported["report"].path, report.accuracy_fp32), (report.path, report.accuracy_int8)):
        scores = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[
            0
        ]
        y = decoded.targets
        expected = np.mean(
            [average_precision_score(y[:, j], scores[:, j]) for j in range(y.shape[1]) if y[:, j].any()]
        )
        assert value == pytest.approx(expected, abs=1e-6)
    assert report.accuracy_drop == pytest.approx(report.accuracy_fp32 - report.accuracy_int8)


def test_the_held_out_test_split_is_scored_at_the_exported_thresholds(exported: dict) -> None:
    from tlsearch.data.multilabel import read_multilabel_csv
    from tlsearch.deploy import Predictor
    from tlsearch.train.metrics import multilabel_metrics

    meta = json.loads(exported["report"].model_json.read_text())["metadata"]
    test = read_multilabel_csv(exported["tmp"] / "test" / "labels.csv", training=meta["labels"])
    predictor = Predictor(exported["report"].path)
    results = predictor.predict(list(test.paths), top_k=len(meta["labels"]))
    scores = np.zeros((len(results), len(meta["labels"])), dtype=np.float32)
    for row, result in enumerate(results):
        for _, index, p in result.top_k:
            scores[row, index] = p
    targets = torch.tensor(test.targets, dtype=torch.float32)
    expected = multilabel_metrics(
        torch.from_numpy(scores), targets, thresholds=torch.tensor(meta["thresholds"], dtype=torch.float32)
    )
    assert meta["test"]["images"] == 12
    for name, value in expected.items():
        assert meta["test"]["metrics"][name] == pytest.approx(value, abs=1e-6)
    retuned = multilabel_metrics(torch.from_numpy(scores), targets)  # what tuning on test would give
    assert retuned["macro_f1"] >= meta["test"]["metrics"]["macro_f1"]
