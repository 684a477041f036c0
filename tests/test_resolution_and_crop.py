"""Resolution, eval crop and resize mode as study settings: searched when listed, each size its own
decoded and feature cache entry, seen by the cost objectives, used by training eval, the checkpoint,
the Predictor and the exported model."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from PIL import Image

import tlsearch.train.latency as latency_module
from tlsearch.config import load_config, resolve_space
from tlsearch.errors import ConfigError
from tlsearch.preprocessing import DataConfig, resize_center_crop
from tlsearch.registry import get_plugin_manager
from tlsearch.search import prepare, run_study
from tlsearch.search.checkpoint import load_record
from tlsearch.search.sampling import sample_choices


def _choices(write_study, n: int = 12, **sections) -> list[dict]:
    config = load_config(write_study(**sections))
    space = resolve_space(config, get_plugin_manager().registry)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [sample_choices(study.ask(), space) for _ in range(n)]


def test_squash_resizes_both_sides_and_center_keeps_the_aspect_ratio() -> None:
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = 255  # a white band on the left quarter
    image = Image.fromarray(wide)
    center = resize_center_crop(image, DataConfig(16, crop_pct=1.0))
    squash = resize_center_crop(image, DataConfig(16, crop_pct=1.0, crop_mode="squash"))
    assert center.shape == squash.shape == (16, 16, 3)
    assert center[:, :2].max() < 50  # the centre crop of a 16×32 resize cuts the band off
    assert squash[:, :3].min() > 200  # squashed, the whole width is kept: the band is there
    with pytest.raises(ValueError, match="crop_mode 'fill' is not supported; valid: center, squash"):
        DataConfig(16, crop_mode="fill")
    old = DataConfig(16).to_dict()
    del old["crop_mode"]  # metadata written before crop_mode existed
    assert DataConfig.from_dict(old).crop_mode == "center"


def test_listed_data_settings_are_searched_and_fixed_ones_recorded(write_study) -> None:
    trials = _choices(
        write_study,
        data={"image_size": [32, 48], "crop_pct": [0.875, 1.0], "crop_mode": ["center", "squash"]},
    )
    for key, values in (
        ("data.image_size", {32, 48}),
        ("data.crop_pct", {0.875, 1.0}),
        ("data.crop_mode", {"center", "squash"}),
    ):
        assert {c[key] for c in trials} == values, key
    fixed = _choices(write_study, n=2, data={"image_size": 40, "crop_pct": 0.95})
    assert all(c["data.image_size"] == 40 and c["data.crop_pct"] == 0.95 for c in fixed)
    assert all("data.crop_mode" not in c for c in fixed)  # the backbone's own


def test_a_backbone_may_list_its_own_sizes(write_study) -> None:
    trials = _choices(
        write_study,
        20,
        data={"image_size": 32},
        space={
            "backbone": {
                "timm": {"model": "test_efficientnet", "weights": "random", "image_size": [24, 40]},
                "torchvision": {"model": "resnet18", "weights": "random"},
            }
        },
    )
    sizes = {c["backbone"]: set() for c in trials}
    for c in trials:
        sizes[c["backbone"]].add(c["data.image_size"])
    assert sizes == {"timm": {24, 40}, "torchvision": {32}}


@pytest.mark.parametrize(
    ("data", "space", "fragments"),
    [
        ({"image_size": [32, 8]}, {}, ["data.image_size", "[16, 1024]", "8"]),
        ({"image_size": []}, {}, ["data.image_size", "empty list"]),
        ({"crop_pct": [0.9, 1.5]}, {}, ["data.crop_pct", "(0.05, 1]", "1.5"]),
        ({"crop_mode": ["center", "fill"]}, {}, ["data.crop_mode", "fill"]),
        ({}, {"backbone": {"timm": {"model": "test_efficientnet", "image_size": [32, "x"]}}}, ["image_size"]),
    ],
)
def test_bad_data_settings_are_config_errors(write_study, tmp_path, data, space, fragments) -> None:
    with pytest.raises(ConfigError) as err:
        prepare(write_study(data=data, space=space), out_dir=tmp_path / "out")
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


FIXED_SIZE_PLUGIN = '''
from tlsearch import hookimpl
from tlsearch.kinds import Backbone
from tlsearch.testing import TinyBackbone


class FixedTiny(TinyBackbone):
    """A tiny CNN that only takes 32 or 64 px (as an exported graph would)."""

    name = "fixed_tiny"

    def input_sizes(self):
        return (32, 64)


@hookimpl
def tlsearch_register_backbones(register):
    register.add(FixedTiny)
'''


def test_a_size_a_fixed_size_backbone_cannot_take_is_a_config_error(write_study, tmp_path) -> None:
    plugin = tmp_path / "fixed.py"
    plugin.write_text(FIXED_SIZE_PLUGIN)
    space = {"backbone": {"fixed_tiny": {}}}
    with pytest.raises(ConfigError) as err:
        prepare(
            write_study(plugins=[str(plugin)], data={"image_size": [32, 48]}, space=space),
            out_dir=tmp_path / "out",
        )
    message = str(err.value)
    assert "space.backbone.fixed_tiny" in message and "'fixed_tiny'" in message
    assert "cannot take image_size 48" in message and "the sizes it takes: 32, 64" in message
    prepare(
        write_study(plugins=[str(plugin)], data={"image_size": [32, 64]}, space=space),
        out_dir=tmp_path / "ok",
    )


@pytest.mark.slow
def test_each_size_trains_evaluates_and_is_recorded_with_its_own_caches(
    write_study, tmp_path, monkeypatch
) -> None:
    """A study over two sizes with a squash eval resize: each trial's model, checkpoint and costs
    follow its size, each size has its own decoded-image and feature cache entries, and latency is
    measured once per size."""
    measured: list[int] = []
    real = latency_module.measure_latency
    monkeypatch.setattr(
        latency_module,
        "measure_latency",
        lambda model, *, input_size, device="cpu": (
            measured.append(input_size) or real(model, input_size=input_size, device=device, runs=1, warmup=0)
        ),
    )
    path = write_study(
        data={"image_size": [24, 40], "crop_mode": "squash", "crop_pct": 1.0},
        space={"freezing": ["linear_probe"]},
        training={"epochs": 1},
        search={"n_trials": 4, "sampler": "random", "constraints": {"latency_ms": 1e6}},
    )
    out = tmp_path / "out"
    study = run_study(path, out_dir=out, progress=False).study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    sizes = {t.user_attrs["choices"]["data.image_size"] for t in complete}
    assert sizes == {24, 40}, sizes
    gflops = {}
    for t in complete:
        size = t.user_attrs["choices"]["data.image_size"]
        record = load_record(out / "trials" / f"{t.number:04d}")
        assert record.data_config["input_size"] == size
        assert (record.data_config["crop_mode"], record.data_config["crop_pct"]) == ("squash", 1.0)
        assert t.user_attrs["backbone"]["input_size"] == size
        gflops.setdefault(size, set()).add(t.user_attrs["gflops"])
    assert max(gflops[24]) < min(gflops[40])  # the cost objectives see the size
    assert sorted(measured) == [24, 40]  # one latency measurement per size
    cache = out / "cache"
    decoded_sizes = {np.load(p, mmap_mode="r").shape[1] for p in cache.glob("images-*.npy")}
    assert {24, 40} <= decoded_sizes
    features = [json.loads(p.read_text()) for p in cache.glob("features-*.json")]
    assert len(features) >= 2


def test_the_exported_model_and_the_predictor_use_the_studys_crop(tmp_path) -> None:
    """A squash / crop_pct 1 model: the metadata records it, the Predictor prepares images with it,
    and the raw-input graph (checked against PIL at export) agrees with the plain model."""
    import timm
    import torch

    from tlsearch.deploy import Predictor
    from tlsearch.export import export_onnx

    config = DataConfig(32, interpolation="bicubic", crop_pct=1.0, crop_mode="squash")
    rng = np.random.default_rng(0)
    raws = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((30, 70), (64, 40), (32, 32))]
    prepared = np.stack([resize_center_crop(Image.fromarray(r), config) for r in raws])
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    meta = {"task": "classification", "labels": ["a", "b", "c"], "data_config": config.to_dict()}
    plain = export_onnx(model, path=tmp_path / "plain.onnx", metadata=meta, validation_images=prepared)
    raw = export_onnx(
        model,
        path=tmp_path / "raw.onnx",
        metadata=meta,
        validation_images=prepared,
        embed_preprocessing=True,
        raw_images=raws,
    )
    predictor = Predictor(plain.path)
    assert predictor.data_config.crop_mode == "squash" and predictor.data_config.crop_pct == 1.0
    np.testing.assert_array_equal(predictor.prepare(raws[0]), prepared[0])  # the whole width, squashed
    ours = [p.top_k[0][1] for p in predictor.predict(raws)]
    theirs = [p.top_k[0][1] for p in Predictor(raw.path).predict(raws)]
    assert ours == theirs


def test_the_summary_names_the_trials_size() -> None:
    from tlsearch.search.sampling import describe_choices

    base = {
        "backbone": "timm",
        "backbone.timm.model": "resnet18",
        "head": "linear",
        "freezing": "linear_probe",
    }
    assert describe_choices({**base, "train.lr": 1e-3, "data.image_size": 160}).startswith(
        "timm(resnet18) @160px + linear"
    )
    assert describe_choices({**base, "train.lr": 1e-3}).startswith("timm(resnet18) + linear")
