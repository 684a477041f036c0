"""Crafted image files and data folders: bounded before decoding, decoded faithfully, refused by name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tlsearch.cli import main
from tlsearch.data import check_images, decode_images, scan_folder
from tlsearch.data.sources import read_csv
from tlsearch.errors import DataError
from tlsearch.preprocessing import DataConfig, load_rgb

CONFIG = DataConfig(16, crop_pct=1.0)


def thin_png(path: Path) -> Path:
    Image.new("L", (1, 3_000_000)).save(path)  # about 6 KB on disk
    return path


def picture(path: Path, value: int = 128, size: tuple[int, int] = (20, 20)) -> Path:
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)
    return path


def classes(root: Path, names: tuple[str, ...] = ("a", "b")) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(3):
            picture(root / name / f"{i}.png", 40 * i)
    return root


def test_a_thin_image_is_refused_from_its_header_naming_the_file(tmp_path: Path) -> None:
    thin = thin_png(tmp_path / "thin.png")
    with pytest.raises(ValueError, match=r"thin\.png.*1×3000000"):
        load_rgb(thin)


def test_skip_leaves_a_thin_image_out_and_counts_it_once(tmp_path: Path) -> None:
    root = classes(tmp_path / "data")
    thin_png(root / "a" / "thin.png")
    images = scan_folder(root)
    with pytest.warns(UserWarning, match="skipped 1"):
        checked = check_images(images, on_bad_image="skip", cache_dir=tmp_path / "cache")
    assert len(checked.images) == len(images) - 1 and len(checked.skipped) == 1
    assert "thin.png" in checked.skipped[0][0]
    decoded = decode_images(checked.images, CONFIG, progress=False)
    assert decoded.images.shape == (6, 16, 16, 3) and not decoded.skipped
    with pytest.raises(DataError, match=r"thin\.png"):
        check_images(images, on_bad_image="error")


def test_predict_reports_a_thin_image_and_still_predicts_the_good_one(tmp_path: Path) -> None:
    from tests.test_deploy_metadata import exported_model

    model = exported_model(tmp_path)
    thin, good = thin_png(tmp_path / "thin.png"), picture(tmp_path / "good.png")
    out = CliRunner().invoke(main, ["predict", str(model), str(thin), str(good)])
    assert out.exit_code == 1
    assert "good.png" in out.stdout and "thin.png" in out.stderr


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    rgb = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and 100 < rgb.mean() < 155


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "rot.jpg", exif=exif)
    assert np.asarray(load_rgb(tmp_path / "rot.jpg")).shape == (40, 20, 3)


def test_a_class_folder_linked_outside_the_data_root_is_refused(tmp_path: Path) -> None:
    root = classes(tmp_path / "data")
    (root / "up").symlink_to("..")
    with pytest.raises(DataError, match=r"up.*outside the data folder"):
        scan_folder(root)


def test_an_image_symlinked_outside_the_data_root_is_refused_naming_it(tmp_path: Path) -> None:
    root = classes(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir()
    secret = picture(tmp_path / "elsewhere" / "secret.png")
    (root / "a" / "link.png").symlink_to(secret)
    with pytest.raises(
        DataError, match=r"image '.*a/link\.png' resolves to '.*elsewhere/secret\.png', outside"
    ):
        scan_folder(root)


def test_a_folder_symlinked_inside_a_class_folder_is_not_walked(tmp_path: Path) -> None:
    root = classes(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir()
    picture(tmp_path / "elsewhere" / "secret.png")
    (root / "a" / "sub").symlink_to(tmp_path / "elsewhere")
    assert all("secret" not in str(p) for p in scan_folder(root).paths)


def test_an_image_symlinked_inside_the_data_root_is_accepted(tmp_path: Path) -> None:
    root = classes(tmp_path / "data")
    (root / "a" / "again.png").symlink_to(next((root / "b").glob("*.png")))
    assert len(scan_folder(root)) == 7


def _csv(folder: Path, *rows: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "targets.csv").write_text("path,y\n" + "".join(f"{row},1.0\n" for row in rows))
    return folder / "targets.csv"


def test_a_relative_csv_path_that_climbs_out_of_its_folder_is_refused(tmp_path: Path) -> None:
    picture(tmp_path / "outside.png")
    csv = _csv(tmp_path / "data", "in.png", "../outside.png")
    picture(tmp_path / "data" / "in.png")
    with pytest.raises(
        DataError,
        match=r"targets\.csv' line 3: image '.*\.\./outside\.png' resolves to .* outside the CSV's folder",
    ):
        read_csv(csv)


def test_absolute_csv_paths_and_paths_inside_the_folder_are_accepted(tmp_path: Path) -> None:
    outside = picture(tmp_path / "outside.png")
    (tmp_path / "data" / "sub").mkdir(parents=True)
    picture(tmp_path / "data" / "sub" / "in.png")
    csv = _csv(tmp_path / "data", "sub/in.png", "sub/../sub/in.png", str(outside))
    assert len(read_csv(csv)) == 3


def test_a_symlink_loop_is_refused(tmp_path: Path) -> None:
    root = classes(tmp_path / "data")
    (root / "loop").symlink_to("loop")
    with pytest.raises(DataError, match=r"loop.*symlink loop"):
        scan_folder(root)


def test_an_empty_class_folder_is_refused_naming_it(tmp_path: Path) -> None:
    root = classes(tmp_path / "data")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*hold no image"):
        scan_folder(root)


def test_a_file_name_that_is_not_utf8_is_handled(tmp_path: Path) -> None:
    root = classes(tmp_path / "data")
    picture(Path(os.fsdecode(bytes(root / "a") + b"/\xff.png")))
    images = scan_folder(root)
    checked = check_images(images, cache_dir=tmp_path / "cache")
    decoded = decode_images(checked.images, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    assert len(decoded) == 7
    broken = Path(os.fsdecode(bytes(root / "b") + b"/\xfe.png"))
    broken.write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped 1"):
        skipped = check_images(scan_folder(root), on_bad_image="skip", cache_dir=tmp_path / "cache")
    assert skipped.skipped[0][0].endswith("\\xfe.png")
    skipped.skipped[0][0].encode("utf-8")  # printable, JSON-able


def test_run_stops_once_before_any_trial_on_an_unreadable_image(write_study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = classes(tmp_path / "data")
    val = classes(tmp_path / "val")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG broken")
    study = write_study(data={"train": str(root), "val": str(val)})
    out = CliRunner().invoke(main, ["run", str(study), "--out", str(tmp_path / "out")])
    assert out.exit_code == 2, out.output
    assert "broken.png" in out.stderr
    assert not (tmp_path / "out" / "study.journal").exists()


def test_a_one_class_or_empty_class_train_folder_exits_2(write_study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = classes(tmp_path / "data", ("a",))
    study = write_study(data={"train": str(root), "val": str(root)})
    out = CliRunner().invoke(main, ["run", str(study), "--out", str(tmp_path / "out")])
    assert out.exit_code == 2 and "at least 2" in out.stderr
