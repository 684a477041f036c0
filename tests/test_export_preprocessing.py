"""Preprocessing in the graph: raw uint8 images of any size give what prepare_image + the plain model give."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from PIL import Image

from tlsearch.errors import ExportError
from tlsearch.export import export_onnx
from tlsearch.export._preprocessing import PIXEL_TOLERANCE, embed_preprocessing, preprocessing_model
from tlsearch.preprocessing import DataConfig, normalize, resize_center_crop

SIZES = [(48, 48), (37, 53), (90, 45), (20, 30), (200, 150)]


def raw_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a, b = rng.uniform(0.05, 0.3, 2)
    img = np.stack([np.sin(a * x) * 100 + 120, np.cos(b * y) * 90 + 120, (x * 3 + y * 2) % 256], -1)
    return np.clip(img + rng.normal(0, 15, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("interpolation", "crop_mode", "crop_pct"),
    [
        ("bilinear", "center", 0.875),
        ("bicubic", "center", 0.875),
        ("bilinear", "squash", 0.9),
        ("bicubic", "squash", 1.0),
    ],
)
def test_graph_preprocessing_matches_pil_within_the_documented_levels(
    interpolation: str, crop_mode: str, crop_pct: float
) -> None:
    config = DataConfig(40, interpolation=interpolation, crop_pct=crop_pct, crop_mode=crop_mode)
    session = ort.InferenceSession(preprocessing_model(config).SerializeToString())
    std = np.asarray(config.std, np.float32).reshape(1, 3, 1, 1) * 255
    for i, (h, w) in enumerate(SIZES):
        raw = raw_image(h, w, i)
        want = normalize(resize_center_crop(Image.fromarray(raw), config)[None], config)
        got = session.run(None, {"image": raw[None]})[0]
        levels = np.abs(got - want) * std
        assert levels.max() <= PIXEL_TOLERANCE[interpolation], (h, w, levels.max())
        assert levels.mean() < 0.1


def _pixel_levels(config: DataConfig, raws: list[np.ndarray]) -> tuple[float, float, float]:
    """Largest difference of the graph from PIL in uint8 levels, its mean, and the largest on the border."""
    session = ort.InferenceSession(preprocessing_model(config).SerializeToString())
    std = np.asarray(config.std, np.float32).reshape(1, 3, 1, 1) * 255
    worst, border, total, count = 0.0, 0.0, 0.0, 0
    for raw in raws:
        want = normalize(resize_center_crop(Image.fromarray(raw), config)[None], config)
        levels = np.round(
            np.abs(session.run(None, {"image": raw[None]})[0] - want) * std, 3
        )  # float32 noise off
        edges = np.concatenate(
            [levels[..., 0, :], levels[..., -1, :], levels[..., :, 0], levels[..., :, -1]], -1
        )
        worst, border = max(worst, float(levels.max())), max(border, float(edges.max()))
        total, count = total + float(levels.sum()), count + levels.size
    return worst, total / count, border


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("crop_mode", ["center", "squash"])
@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("ratio", [2, 3, 4, 2.5, 1.37])
def test_graph_preprocessing_matches_pil_at_exact_and_other_ratios_including_the_border(
    interpolation: str, crop_pct: float, crop_mode: str, ratio: float
) -> None:
    """Whole images reduced 2×, 3×, 4× (and by ratios that are not whole) to the resize size: with
    ``crop_pct: 1`` nothing crops the border away, where PIL renormalises its filter over the taps
    inside the image (bilinear used to be 5–16 levels off there)."""
    config = DataConfig(32, interpolation=interpolation, crop_pct=crop_pct, crop_mode=crop_mode)
    side = round(config.resize_size * ratio)
    raws = [
        _noise(side, side, 0),
        raw_image(side, side, 1),
        _noise(side, round(side * 1.5), 2),  # the shorter side at the ratio, the other not
        raw_image(round(side * 1.25), side, 3),
    ]
    worst, mean, border = _pixel_levels(config, raws)
    assert worst <= PIXEL_TOLERANCE[interpolation], (side, worst)
    assert border <= 1.0, (side, border)
    assert mean < 0.03, (side, mean)


def test_graph_rounds_half_up_as_pil_does() -> None:
    """A 2× bilinear reduction of a whole image lands many pixels on exactly .5: PIL rounds them up
    (its fixed-point ``+ 0.5``), ONNX ``Round`` would round half of them down to even."""
    config = DataConfig(32, interpolation="bilinear", crop_pct=1.0, crop_mode="squash")
    raw = np.zeros((64, 64, 3), np.uint8)
    raw[:, 1::4] = 1  # columns 1, 5, 9, …: each output pixel of the width pass is 0.375 or 0.625 of a level
    raw[1::4, :] = 2
    worst, mean, _ = _pixel_levels(config, [raw, _noise(64, 64, 5)])
    assert worst <= 1.0 and mean < 0.01, (worst, mean)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=5).eval()
    config = DataConfig(48, interpolation="bicubic", crop_pct=0.875)
    raws = [raw_image(h, w, i) for i, (h, w) in enumerate(SIZES)]
    prepared = np.stack([resize_center_crop(Image.fromarray(r), config) for r in raws])
    folder = tmp_path_factory.mktemp("raw")
    report = export_onnx(
        model,
        path=folder / "model.onnx",
        metadata={"task": "classification", "labels": list("abcde"), "data_config": config.to_dict()},
        validation_images=prepared,
        embed_preprocessing=True,
        raw_images=raws,
    )
    return model, config, raws, prepared, report


def test_raw_input_model_gives_the_plain_models_top1_on_images_of_different_sizes(exported) -> None:  # type: ignore[no-untyped-def]
    model, config, raws, prepared, report = exported
    session = ort.InferenceSession(str(report.path))
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[3] == 3
    with torch.inference_mode():
        plain = model(torch.from_numpy(normalize(prepared, config))).numpy()
    for raw, want in zip(raws, plain, strict=True):
        got = session.run(None, {inp.name: raw[None]})[0][0]
        assert got.argmax() == want.argmax()
        np.testing.assert_allclose(got, want, atol=0.05)
    assert report.input_format == "nhwc_uint8_raw"
    carried = json.loads(session.get_modelmeta().custom_metadata_map["tlsearch"])  # the file says so too
    assert carried["input_format"] == "nhwc_uint8_raw"
    assert report.preprocessing["pixel_max_diff_levels"] <= 2.0
    assert report.preprocessing["image_sizes"] == [list(s) for s in SIZES]
    assert report.preprocessing["top1_agreement"] == 1.0


def test_raw_input_model_takes_a_batch_of_same_size_images(exported) -> None:  # type: ignore[no-untyped-def]
    _, _, raws, _, report = exported
    session = ort.InferenceSession(str(report.path))
    batch = np.stack([raws[1], raw_image(37, 53, 99), raws[1]])
    out = session.run(None, {"image": batch})[0]
    single = session.run(None, {"image": raws[1][None]})[0]
    assert out.shape == (3, 5)
    np.testing.assert_allclose(out[0], single[0], atol=1e-5)
    np.testing.assert_allclose(out[2], single[0], atol=1e-5)


def test_interpolations_without_an_onnx_equivalent_are_refused(exported) -> None:  # type: ignore[no-untyped-def]
    import onnx

    *_, report = exported
    proto = onnx.load(str(report.path))
    with pytest.raises(ExportError, match="'lanczos'.*supports: bilinear, bicubic"):
        embed_preprocessing(proto, DataConfig(48, interpolation="lanczos"))


def test_opset_below_18_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "g", [x], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    with pytest.raises(ExportError, match="opset >= 18; the model has opset 17"):
        embed_preprocessing(proto, DataConfig(8))


def test_a_pixel_difference_equal_to_the_tolerance_passes_and_one_above_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnx

    from tlsearch.export._parity import cpu_session
    from tlsearch.export._preprocessing import check_preprocessing

    h = onnx.helper
    graph = h.make_graph(
        [
            h.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            h.make_node("Flatten", ["pooled"], ["out"]),
        ],
        "mean_colour",
        [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["n", 3, 48, 48])],
        [h.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["n", 3])],
    )
    plain = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    config = DataConfig(48, interpolation="bicubic", crop_pct=0.875)
    raw_model = embed_preprocessing(plain, config)

    def check() -> dict:  # type: ignore[type-arg]
        return check_preprocessing(
            raw_model,
            plain_session=cpu_session(plain.SerializeToString()),
            raw_images=[raw_image(hh, ww, i) for i, (hh, ww) in enumerate(SIZES)],
            config=config,
            task="regression",
        )

    report = check()
    measured = report["pixel_max_diff_levels"]
    assert 0 < measured <= PIXEL_TOLERANCE["bicubic"]
    # in uint8 levels, over every pixel of every image (bugs caught: the normalised difference
    # divided by std × 255; the mean's count or sum off by one)
    session = ort.InferenceSession(preprocessing_model(config).SerializeToString())
    std = np.asarray(config.std, np.float32).reshape(1, 3, 1, 1) * 255
    levels = [
        np.abs(
            session.run(None, {"image": raw[None]})[0]
            - normalize(resize_center_crop(Image.fromarray(raw), config)[None], config)
        )
        * std
        for raw in (raw_image(hh, ww, i) for i, (hh, ww) in enumerate(SIZES))
    ]
    assert measured == pytest.approx(max(float(x.max()) for x in levels), rel=1e-6)
    mean = sum(float(x.sum()) for x in levels) / sum(x.size for x in levels)
    assert report["pixel_mean_diff_levels"] == pytest.approx(mean, rel=1e-6)
    exact = DataConfig(48, interpolation="bicubic", crop_pct=1.0, crop_mode="squash")
    unresized = check_preprocessing(  # an image at the input size: nothing to resize, no difference
        embed_preprocessing(plain, exact),
        plain_session=cpu_session(plain.SerializeToString()),
        raw_images=[raw_image(48, 48, 0)],
        config=exact,
        task="regression",
    )
    assert unresized["pixel_max_diff_levels"] < 0.01  # bug caught: the running max starting above 0
    for bad in (
        np.zeros((48, 48, 4), np.uint8),
        np.zeros((48, 48, 3), np.float32),
        np.zeros((48, 48), np.uint8),
    ):
        with pytest.raises(ExportError, match="must be HWC uint8 RGB"):  # each fault alone is refused
            check_preprocessing(
                raw_model,
                plain_session=cpu_session(plain.SerializeToString()),
                raw_images=[bad],
                config=config,
                task="regression",
            )
    monkeypatch.setitem(PIXEL_TOLERANCE, "bicubic", measured)
    assert check()["pixel_tolerance_levels"] == measured  # exactly at the tolerance is within it
    monkeypatch.setitem(PIXEL_TOLERANCE, "bicubic", float(np.nextafter(measured, 0.0)))
    with pytest.raises(ExportError, match="differs from tlsearch.preprocessing"):
        check()


def test_a_bilinear_whole_image_model_exports_with_raw_input(tmp_path: Path) -> None:
    """``crop_pct: 1`` with bilinear at exact 2×, 3×, 4× reductions: export used to refuse it (the
    graph's border was up to 16 levels off PIL); now it writes the model and the outputs agree."""
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3).eval()
    config = DataConfig(32, interpolation="bilinear", crop_pct=1.0)
    raws = [_noise(64, 64, 0), raw_image(96, 96, 1), _noise(128, 192, 2), raw_image(45, 70, 3)]
    prepared = [resize_center_crop(Image.fromarray(r), config) for r in raws]
    report = export_onnx(
        model,
        path=tmp_path / "model.onnx",
        metadata={"task": "classification", "labels": list("abc"), "data_config": config.to_dict()},
        validation_images=np.stack(prepared),
        embed_preprocessing=True,
        raw_images=raws,
    )
    assert report.preprocessing["pixel_max_diff_levels"] <= PIXEL_TOLERANCE["bilinear"]
    assert report.preprocessing["top1_agreement"] == 1.0
    session = ort.InferenceSession(str(report.path))
    with torch.inference_mode():
        plain = model(torch.from_numpy(normalize(np.stack(prepared), config))).numpy()
    for raw, want in zip(raws, plain, strict=True):
        np.testing.assert_allclose(session.run(None, {"image": raw[None]})[0][0], want, atol=0.05)


def test_a_raw_input_model_the_onnx_checker_rejects_is_refused(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Bug caught: the raw-input model (the plain one with preprocessing in front) written without
    onnx.checker's full check, so a malformed graph would reach a deployer. A stand-in embedding
    leaves the IR version unset, which the checker refuses."""
    import tlsearch.export._onnx as onnx_module

    def malformed(plain, config):  # type: ignore[no-untyped-def]
        proto = embed_preprocessing(plain, config)
        proto.ir_version = 0
        return proto

    monkeypatch.setattr(onnx_module, "embed_preprocessing", malformed)
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3).eval()
    config = DataConfig(32, interpolation="bilinear", crop_pct=1.0)
    raws = [raw_image(64, 64, 0), raw_image(45, 70, 1)]
    with pytest.raises(ExportError, match="onnx.checker rejected the exported model"):
        export_onnx(
            model,
            path=tmp_path / "model.onnx",
            metadata={"task": "classification", "labels": list("abc"), "data_config": config.to_dict()},
            validation_images=np.stack([resize_center_crop(Image.fromarray(r), config) for r in raws]),
            embed_preprocessing=True,
            raw_images=raws,
        )
