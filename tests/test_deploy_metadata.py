"""Models that lie: metadata that disagrees with the graph or is out of bounds is refused when opened."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from tlsearch.preprocessing import DataConfig

CONFIG = DataConfig(32, crop_pct=0.875)


def exported_model(folder: Path) -> Path:
    """A tiny 4-class model exported by tlsearch (random weights)."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4).eval()
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    meta = {"task": "classification", "labels": list("abcd"), "data_config": CONFIG.to_dict()}
    return export_onnx(model, path=folder / "model.onnx", metadata=meta, validation_images=images).path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_model(tmp_path_factory.mktemp("lying"))


def edited(model: Path, target: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key == "tlsearch":
            meta = json.loads(prop.value)
            change(meta)
            prop.value = json.dumps(meta)
    onnx.save(proto, str(target))
    return target


def data_config(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda meta: meta["data_config"].update(values)


CASES = {
    "labels": (lambda meta: meta.update(labels=["x", "y"]), r"labels has 2 entries.*4 outputs"),
    "input_size": (data_config(input_size=64), r"input_size is 64"),
    "raw_flag": (lambda meta: meta.update(input_format="nhwc_uint8_raw"), r"input_format 'nhwc_uint8_raw'"),
    "crop_pct": (data_config(crop_pct=1e-6), r"crop_pct must be in \(0.05, 1\]"),
    "huge": (data_config(input_size=60000), r"input_size must be in \[8, 4096\] but got 60000"),
    "std0": (data_config(std=[0.0, 0.2, 0.2]), r"std must be > 0"),
    "mean2": (data_config(mean=[0.5, 0.5]), r"mean must be 3 finite numbers"),
    "backbone_model": (
        lambda meta: meta.update(backbone_model=18),
        r"backbone_model must be a string, got 18",
    ),
    "plugin_kind": (
        lambda meta: meta.update(provenance={"plugins": [{"kind": "gizmo", "name": "x", "package": "p"}]}),
        r"provenance.plugins\[0\]: kind 'gizmo' is not valid; valid: backbone, head, freezing, regularizer",
    ),
    "plugin_version": (
        lambda meta: meta.update(
            provenance={"plugins": [{"kind": "head", "name": "x", "package": "p", "version": 1.2}]}
        ),
        r"provenance.plugins\[0\]: version must be a string or null, got 1.2",
    ),
    "versions": (
        lambda meta: meta.update(provenance={"plugins": [], "versions": {"torch": 2}}),
        r"provenance.versions must map names to version strings",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_lying_model_is_refused_naming_the_key(case: str, model: Path, tmp_path: Path) -> None:
    change, message = CASES[case]
    bad = edited(model, tmp_path / "bad.onnx", change)
    with pytest.raises(ModelFormatError, match=message):
        Predictor(bad)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    out = CliRunner().invoke(main, ["predict", str(bad), str(image)])
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output


def test_the_honest_model_still_opens(model: Path) -> None:
    assert Predictor(model).labels == list("abcd")
