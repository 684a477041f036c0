"""The held-out test split: carved or read apart from train/val, never seen by a trial, and scored
once on the exported ONNX model (what ships), whose metadata, status and report then carry it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from tlsearch.config import load_config, parse_config
from tlsearch.data import ImageList, decode_images, load_all_splits, scan_folder
from tlsearch.errors import ConfigError, DataError
from tlsearch.preprocessing import DataConfig, normalize


def _config(shapes_dir: Path, **data: Any):
    raw = {
        "name": "t",
        "data": {"train": str(shapes_dir / "train"), "val": str(shapes_dir / "val"), **data},
        "space": {"backbone": {"timm": {"model": "test_efficientnet", "weights": "random"}}},
    }
    return parse_config(raw)


def _splits(config):
    return load_all_splits(config.data, task=config.task, seed=0, resolve=config.resolve_path)


def test_test_fraction_is_carved_from_train_stratified_and_seeded(shapes_dir: Path) -> None:
    config = _config(shapes_dir, test_fraction=0.25)
    splits = _splits(config)
    everything = scan_folder(shapes_dir / "train")
    assert splits.test is not None
    train, test = set(splits.train.paths), set(splits.test.paths)
    assert not train & test and not set(splits.val.paths) & test
    assert train | test == set(everything.paths)  # carved from the train folder, val untouched
    assert splits.val.paths == scan_folder(shapes_dir / "val").paths
    assert sorted(set(splits.test.targets)) == [0, 1, 2, 3]  # every class: 3 of its 12 images
    assert all(splits.test.targets.count(c) == 3 for c in range(4))  # type: ignore[union-attr]
    assert _splits(config).test.paths == splits.test.paths  # type: ignore[union-attr]


def test_test_fraction_comes_before_val_from_one_folder(shapes_dir: Path) -> None:
    raw = {
        "name": "t",
        "data": {"folder": str(shapes_dir / "train"), "test_fraction": 0.25, "val_fraction": 0.25},
        "space": {"backbone": {"timm": {"model": "test_efficientnet", "weights": "random"}}},
    }
    splits = _splits(parse_config(raw))
    assert splits.test is not None
    sets = [set(s.paths) for s in (splits.train, splits.val, splits.test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert len(splits.test) == 12 and len(splits.val) == 8 and len(splits.train) == 28


def test_a_test_folder_is_read_with_the_training_classes(shapes_dir: Path, tmp_path: Path) -> None:
    test_dir = tmp_path / "test"
    shutil.copytree(shapes_dir / "val", test_dir)
    splits = _splits(_config(shapes_dir, test=str(test_dir)))
    assert splits.test is not None and len(splits.test) == 16
    assert splits.test.classes == splits.train.classes


def test_a_test_split_that_shares_a_file_with_val_is_a_config_error(shapes_dir: Path, tmp_path: Path) -> None:
    test_dir = tmp_path / "test"
    shutil.copytree(shapes_dir / "val", test_dir)
    shared = sorted((shapes_dir / "train" / "circle").iterdir())[0]
    (test_dir / "circle" / "copy.png").symlink_to(shared)  # the same file under another name
    # refused before the overlap check: an image may not resolve outside its split's folder
    with pytest.raises(
        DataError, match=r"copy\.png' resolves to .*circle_0000\.png', outside the data folder"
    ):
        _splits(_config(shapes_dir, test=str(test_dir)))
    with pytest.raises(ConfigError, match=r"data\.test shares files with data\.val, e\.g\. .*circle"):
        _splits(_config(shapes_dir, test=str(shapes_dir / "val")))


def test_test_and_test_fraction_together_or_a_missing_test_folder_are_config_errors(shapes_dir: Path) -> None:
    with pytest.raises(ConfigError, match="at most one of: test .*test_fraction"):
        _config(shapes_dir, test=str(shapes_dir / "val"), test_fraction=0.2)
    with pytest.raises(ConfigError, match=r"data\.test: folder .*nowhere.* does not exist"):
        _config(shapes_dir, test=str(shapes_dir / "nowhere"))
    with pytest.raises(ConfigError, match="test_fraction"):
        _config(shapes_dir, test_fraction=1.0)


def test_run_refuses_an_overlapping_test_split_before_any_trial(
    write_study, shapes_dir: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from tlsearch.cli import main

    study = write_study(data={"test": str(shapes_dir / "val")})
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "data.test shares files with data.val" in result.output
    assert not (tmp_path / "out" / "trials").exists()


def _onnx_accuracy(model: Path, images: ImageList) -> float:
    """The exported file's accuracy on ``images``, computed here with onnxruntime itself."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["tlsearch"])
    config = DataConfig.from_dict(meta["data_config"])
    decoded = decode_images(images, config, cache_dir=None, progress=False)
    logits = session.run(None, {session.get_inputs()[0].name: normalize(decoded.images, config)})[0]
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(images.targets)))


@pytest.mark.slow
def test_no_trial_sees_a_test_image_and_the_test_score_is_the_onnx_models(
    write_study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tlsearch.search.study_data as study_data
    from tlsearch.report import study_status, write_report
    from tlsearch.report._status import format_status
    from tlsearch.search import export_study, run_study

    seen: list[Path] = []
    real_decode, real_check = study_data.decode_images, study_data.check_images

    def decode(images: ImageList, *args: Any, **kwargs: Any) -> Any:
        seen.extend(images.paths)
        return real_decode(images, *args, **kwargs)

    def check(images: ImageList, *args: Any, **kwargs: Any) -> Any:
        seen.extend(images.paths)
        return real_check(images, *args, **kwargs)

    monkeypatch.setattr(study_data, "decode_images", decode)
    monkeypatch.setattr(study_data, "check_images", check)
    study = write_study(
        data={"test_fraction": 0.25},
        space={"freezing": ["linear_probe"], "regularizers": {}},
        training={"epochs": 1},
        search={"n_trials": 2},
        export={"enabled": True, "soup": False},
    )
    out = tmp_path / "out"
    result = run_study(study, out_dir=out, progress=False)
    config = load_config(study)
    test = _splits(config).test
    assert test is not None and len(test) == 12
    assert seen and not set(seen) & set(test.paths)  # the trials' images: none of the test split
    assert not set(result.data.train.paths + result.data.val.paths) & set(test.paths)

    report = export_study(out, pm=result.pm)
    meta = json.loads((out / "model.json").read_text())["metadata"]
    assert meta["test"]["images"] == len(test)
    assert meta["test"]["metrics"]["accuracy"] == pytest.approx(_onnx_accuracy(report.path, test))
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["tlsearch"])["test"] == meta["test"]
    record = json.loads((out / "model.json").read_text())
    assert record["sha256"] == report.sha256  # model.json describes the file as rewritten

    status = study_status(out)
    assert status["export"]["test"]["metrics"] == meta["test"]["metrics"]
    text = format_status(status)
    assert f"test accuracy {meta['test']['metrics']['accuracy']:.4g} on 12 held-out image(s)" in text
    html = write_report(out).html.read_text()
    assert "test accuracy" in html and "optimistic" in html


@pytest.mark.slow
def test_score_exported_counts_right_and_wrong_predictions(write_study, tmp_path: Path) -> None:
    """With labels set so that exactly half the predictions are right, the score is exactly 0.5;
    ``tlsearch run`` says what it exported and that without a test split its score is optimistic."""
    from click.testing import CliRunner

    from tlsearch.cli import main
    from tlsearch.search.holdout import score_exported

    study = write_study(
        space={"freezing": ["linear_probe"], "regularizers": {}},
        training={"epochs": 1},
        search={"n_trials": 1},
        export={"enabled": True},
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(out), "--console", "plain"])
    assert result.exit_code == 0, result.output
    assert "exported: trial 0  val accuracy" in result.output
    assert "no test split: the validation score is optimistic after selection" in result.output
    model = out / "model.onnx"
    images = _splits(load_config(study)).val
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["tlsearch"])
    config = DataConfig.from_dict(meta["data_config"])
    decoded = decode_images(images, config, cache_dir=None, progress=False)
    predicted = np.argmax(session.run(None, {"input": normalize(decoded.images, config)})[0], axis=1)
    targets = [int(p) if i % 2 == 0 else int(p + 1) % 4 for i, p in enumerate(predicted)]
    labelled = ImageList(images.paths, targets, images.classes)
    score = score_exported(model, labelled, task="classification")
    assert score["images"] == len(images) and score["metrics"]["accuracy"] == pytest.approx(0.5)


def test_status_without_export_or_test_split_says_so() -> None:
    from tlsearch.report._status import export_lines

    assert export_lines(None, metric="accuracy") == []
    lines = export_lines({"trial": 3, "value": 0.9, "test": None, "soup": None}, metric="accuracy")
    assert "no test split: the validation score is optimistic after selection" in lines[0]


def test_yaml_round_trip_keeps_the_test_settings(shapes_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    raw = {
        "name": "t",
        "data": {"folder": str(shapes_dir / "train"), "test_fraction": 0.3},
        "space": {"backbone": {"timm": {"model": "test_efficientnet", "weights": "random"}}},
        "export": {"soup": False, "soup_size": 3},
    }
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    assert config.data.test_fraction == 0.3 and config.export.soup is False and config.export.soup_size == 3


def test_regression_reads_a_test_csv_and_carves_a_test_fraction(tmp_path: Path) -> None:
    from tlsearch.demo import make_sizes

    labels = make_sizes(tmp_path / "sizes", n=40, size=32, seed=0)
    raw = {
        "name": "r",
        "task": "regression",
        "data": {"csv": str(labels), "test_fraction": 0.25},
        "space": {
            "backbone": {"timm": {"model": "test_efficientnet", "weights": "random"}},
            "head": ["regression"],
        },
    }
    splits = _splits(parse_config(raw))
    assert splits.test is not None and len(splits.test) == 10 and len(splits.val) == 6
    assert not set(splits.test.paths) & (set(splits.train.paths) | set(splits.val.paths))
    raw["data"] = {"csv": str(labels), "test": str(labels)}  # the same rows: every file shared
    with pytest.raises(ConfigError, match=r"data\.test shares files with data\.(train|val)"):
        _splits(parse_config(raw))


def test_the_report_says_why_a_trial_was_not_mixed_into_the_soup() -> None:
    from tlsearch.report._html import _export_block

    soup = {
        "exported": False,
        "ingredients": [4],
        "reason": "no other top trial shares the best trial's backbone start",
        "tried": [],
        "left_out": [{"trial": 7, "reason": "another backbone start (backbone='torchvision')"}],
    }
    export = {"trial": 4, "value": 0.9, "test": {"metrics": {"accuracy": 0.85}, "images": 20}, "soup": soup}
    html = _export_block({"metric": "accuracy", "export": export})
    assert "not mixed: another backbone start (backbone=&#x27;torchvision&#x27;)" in html
    assert "no other top trial shares" in html and "test accuracy" in html and "0.85" in html
