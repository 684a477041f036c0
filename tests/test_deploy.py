"""tlsearch.deploy and `tlsearch predict`: same answers as PyTorch, per-file errors, no torch needed."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image

from tlsearch.cli import main
from tlsearch.deploy import ModelFormatError, Predictor
from tlsearch.export import export_onnx
from tlsearch.preprocessing import DataConfig, normalize, prepare_image

CONFIG = DataConfig(40, interpolation="bicubic", crop_pct=0.875)
LABELS = ["ant", "bee", "cat", "dog"]
SIZES = [(40, 40), (60, 45), (33, 70), (100, 80), (52, 52), (41, 90)]


def write_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    paths = []
    for i, (h, w) in enumerate(SIZES):
        y, x = np.mgrid[0:h, 0:w]
        a, b = rng.uniform(0.05, 0.4, 2)
        img = np.stack([np.sin(a * x) * 100 + 120, np.cos(b * y) * 90 + 120, (x * i + y) % 256], -1)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        path = folder / ("sub" if i % 2 else "") / f"img{i}.{'png' if i % 3 else 'jpg'}"
        Image.fromarray(img).save(path)
        paths.append(path)
    return sorted(paths)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("deploy")
    files = write_images(root / "images")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(LABELS)).eval()
    prepared = np.stack([prepare_image(p, CONFIG) for p in files])
    meta = {
        "task": "classification",
        "labels": LABELS,
        "data_config": CONFIG.to_dict(),
        "backbone_model": "test_resnet",
        "provenance": {
            "plugins": [{"kind": "backbone", "name": "timm", "package": "tlsearch", "version": "0.1.0"}],
            "versions": {"tlsearch": "0.1.0", "torch": torch.__version__},
        },
    }
    classifier = export_onnx(
        model, path=root / "cls" / "model.onnx", metadata=meta, validation_images=prepared
    )
    torch.manual_seed(1)
    reg_model = timm.create_model("test_resnet", pretrained=False, num_classes=2).eval()
    reg_meta = {"task": "regression", "labels": ["age", "height"], "data_config": CONFIG.to_dict()}
    regressor = export_onnx(
        reg_model, path=root / "reg" / "model.onnx", metadata=reg_meta, validation_images=prepared
    )
    with torch.inference_mode():
        logits = model(torch.from_numpy(normalize(prepared, CONFIG))).numpy()
        values = reg_model(torch.from_numpy(normalize(prepared, CONFIG))).numpy()
    return {
        "root": root,
        "files": files,
        "cls": classifier.path,
        "reg": regressor.path,
        "logits": logits,
        "values": values,
    }


def test_predictor_gives_pytorchs_labels_and_probabilities(setup) -> None:  # type: ignore[no-untyped-def]
    predictor = Predictor(setup["cls"])
    results = predictor.predict(setup["files"], top_k=4, batch_size=4)
    probs = torch.softmax(torch.from_numpy(setup["logits"]), dim=1).numpy()
    assert [r.source for r in results] == [str(p) for p in setup["files"]]
    for result, p in zip(results, probs, strict=True):
        assert result.ok
        assert result.top_k[0][0] == LABELS[int(p.argmax())]
        assert [i for _, i, _ in result.top_k] == list(np.argsort(-p, kind="stable"))
        np.testing.assert_allclose([s for *_, s in result.top_k], np.sort(p)[::-1], atol=1e-5)


def test_predictor_accepts_arrays_as_raw_images(setup) -> None:  # type: ignore[no-untyped-def]
    predictor = Predictor(setup["cls"])
    array = np.asarray(Image.open(setup["files"][1]).convert("RGB"))
    (from_array,) = predictor.predict([array], top_k=1)
    (from_file,) = predictor.predict([setup["files"][1]], top_k=1)
    assert from_array.source == "<array 0>" and from_array.top_k == from_file.top_k


def test_regression_predicts_the_values(setup) -> None:  # type: ignore[no-untyped-def]
    results = Predictor(setup["reg"]).predict(setup["files"])
    for result, want in zip(results, setup["values"], strict=True):
        assert result.names == ["age", "height"] and not result.top_k
        np.testing.assert_allclose(result.values, want, atol=1e-4)
    out = CliRunner().invoke(main, ["predict", str(setup["reg"]), str(setup["files"][0]), "--csv"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["output"] for r in rows] == ["age", "height"]
    np.testing.assert_allclose([float(r["value"]) for r in rows], setup["values"][0], atol=1e-4)


def test_cli_json_over_a_folder_recursively(setup) -> None:  # type: ignore[no-untyped-def]
    out = CliRunner().invoke(
        main, ["predict", str(setup["cls"]), str(setup["root"] / "images"), "--json", "--top-k", "2"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert [d["source"] for d in data] == [str(p) for p in setup["files"]]
    assert all(len(d["top_k"]) == 2 for d in data)
    assert [d["top_k"][0]["label"] for d in data] == [LABELS[i] for i in setup["logits"].argmax(1)]


def test_cli_csv_and_text(setup) -> None:  # type: ignore[no-untyped-def]
    files = [str(p) for p in setup["files"][:2]]
    out = CliRunner().invoke(
        main, ["predict", str(setup["cls"]), *files, "--csv", "--top-k", "3", "--batch-size", "1"]
    )
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 6 and [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    assert rows[0]["label"] == LABELS[int(setup["logits"][0].argmax())] and rows[0]["error"] == ""
    text = CliRunner().invoke(main, ["predict", str(setup["cls"]), files[0], "--top-k", "1"])
    assert text.exit_code == 0 and text.stdout.startswith(
        files[0] + "\t" + LABELS[int(setup["logits"][0].argmax())]
    )


def test_bad_files_are_reported_one_by_one_and_the_rest_predicted(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not a picture")
    missing = tmp_path / "missing.png"
    good = [str(p) for p in setup["files"][:3]]
    args = ["predict", str(setup["cls"]), good[0], str(not_image), good[1], str(missing), good[2], "--json"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 1
    data = json.loads(out.stdout)
    assert [d["ok"] for d in data] == [True, False, True, False, True]
    assert str(not_image) in data[1]["error"] and str(missing) in data[3]["error"]
    assert f"error: {not_image}" in out.stderr and "2 of 5 file(s) could not be predicted" in out.stderr


def test_a_model_not_made_by_tlsearch_is_refused(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(setup["cls"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(ModelFormatError, match=r"foreign\.onnx.*not a model exported by tlsearch"):
        Predictor(foreign)
    out = CliRunner().invoke(main, ["predict", str(foreign), str(setup["files"][0])])
    assert out.exit_code == 2 and "not a model exported by tlsearch" in out.stderr
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx at all")
    with pytest.raises(ModelFormatError, match=r"cannot load .*garbage\.onnx"):
        Predictor(garbage)


BLOCK_TORCH = """
import importlib.abc, sys
class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            raise ImportError(f"torch is blocked in this test: import {name}")
sys.meta_path.insert(0, BlockTorch())
"""


def run_without_torch(code: str) -> subprocess.CompletedProcess[str]:
    script = BLOCK_TORCH + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_predictor_works_where_torch_cannot_be_imported(setup) -> None:  # type: ignore[no-untyped-def]
    proc = run_without_torch(f"""
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the torch block did not work")
        from tlsearch.deploy import Predictor
        predictor = Predictor({str(setup["cls"])!r})
        results = predictor.predict({[str(p) for p in setup["files"]]!r}, top_k=1)
        assert not [m for m in sys.modules if m.split(".")[0] == "torch"]
        print(",".join(r.top_k[0][0] for r in results))
        print(predictor.provenance.backbone_model, *predictor.provenance.requirements())
    """)
    assert proc.returncode == 0, proc.stderr
    labels, made_by = proc.stdout.strip().splitlines()
    assert labels.split(",") == [LABELS[i] for i in setup["logits"].argmax(1)]
    assert made_by.split() == ["test_resnet", "tlsearch==0.1.0", f"torch=={torch.__version__}"]


def test_predict_cli_works_where_torch_cannot_be_imported(setup) -> None:  # type: ignore[no-untyped-def]
    proc = run_without_torch(f"""
        from tlsearch.cli import main
        main(["predict", {str(setup["cls"])!r}, {str(setup["root"] / "images")!r}, "--json"], prog_name="tlsearch")
    """)
    assert proc.returncode == 0, proc.stderr
    assert [d["top_k"][0]["label"] for d in json.loads(proc.stdout)] == [
        LABELS[i] for i in setup["logits"].argmax(1)
    ]


def test_raw_input_models_are_served_too(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(LABELS)).eval()
    prepared = np.stack([prepare_image(p, CONFIG) for p in setup["files"]])
    meta = {"task": "classification", "labels": LABELS, "data_config": CONFIG.to_dict()}
    raws = [np.asarray(Image.open(p).convert("RGB")) for p in setup["files"]]
    report = export_onnx(
        model,
        path=tmp_path / "raw.onnx",
        metadata=meta,
        validation_images=prepared,
        embed_preprocessing=True,
        raw_images=raws,
        exporter="torchscript",
    )
    predictor = Predictor(report.path)
    assert predictor.raw_input
    results = predictor.predict(setup["files"], top_k=1, batch_size=8)
    assert [r.top_k[0][0] for r in results] == [LABELS[i] for i in setup["logits"].argmax(1)]
