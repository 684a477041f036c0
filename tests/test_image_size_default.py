"""The data-derived default image_size (tlsearch.data.sizes): a study that sets no size trains at
the training images' median shorter side rounded up to a multiple of 32, at least 64 px, at most
the backbone's native size; a study that sets one keeps it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from PIL import Image

from tests.conftest import assert_refused_before_work
from tlsearch.config import load_config, resolve_space
from tlsearch.data.sizes import default_image_size, median_short_side
from tlsearch.demo import make_shapes
from tlsearch.kinds import multiples_of
from tlsearch.registry import get_plugin_manager
from tlsearch.search import run_study
from tlsearch.search.checkpoint import load_record
from tlsearch.search.sampling import sample_choices


@pytest.mark.parametrize(
    ("side", "native", "accepted", "expected"),
    [
        (8, 224, None, 64),  # the floor: tiny scans are upsampled to 64, not 224
        (64, 224, None, 64),
        (65, 224, None, 96),  # rounded up to a multiple of 32, never down
        (100, 224, None, 128),
        (192, 224, None, 192),
        (200, 224, None, None),  # 224 would be the size: the native one, kept as it is
        (300, 224, None, None),  # larger images: downsampled to the native size as before
        (100, 96, None, None),  # never above the native size
        (8, 48, None, None),  # a backbone whose native size is below the floor keeps it
        (8, 224, (224, 256), None),  # a fixed-size backbone that cannot take 64 keeps its own
        (8, 224, (64, 224), 64),
        (8, 224, (96, 224), 96),  # the smallest size it takes above the derived one
        (8, 518, multiples_of(14), 70),  # a patch-14 ViT (DINOv2): 64 is not a multiple of 14
        (100, 224, multiples_of(16), 128),  # 128 is a multiple of 16 already
        (200, 224, multiples_of(14), None),  # 210 < 224 would do, but 224 is the derived size
        (None, 224, None, None),  # no readable header: native
        (8, None, None, None),  # a backbone that reports no native size: native
    ],
)
def test_default_image_size_rule(side, native, accepted, expected) -> None:
    assert default_image_size(side, native=native, accepted=accepted) == expected


def test_median_short_side_reads_the_headers_and_samples_evenly(tmp_path: Path) -> None:
    paths = []
    for i, (w, h) in enumerate([(10, 20), (30, 30), (50, 40), (90, 70), (12, 200)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (w, h)).save(path)
        paths.append(path)
    assert median_short_side(paths) == 30  # shorter sides 10, 30, 40, 70, 12
    assert median_short_side(paths, max_images=2) == 10  # every third: 10 and 70, the lower median
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert median_short_side([tmp_path / "bad.png", paths[3]]) == 70  # an unreadable header is skipped
    assert median_short_side([]) is None


def _space(write_study, **data):
    config = load_config(write_study(data=data))
    return resolve_space(config, get_plugin_manager().registry)


def test_the_sampler_records_the_derived_size_only_when_the_study_sets_none(write_study) -> None:
    study = optuna.create_study()
    unset = dataclasses.replace(_space(write_study, image_size=None), data_short_side=8)
    assert sample_choices(study.ask(), unset)["data.image_size"] == 64
    # test_efficientnet's native size is 160: images of 150 px would round to 160, i.e. native
    assert "data.image_size" not in sample_choices(
        study.ask(), dataclasses.replace(unset, data_short_side=150)
    )
    explicit = dataclasses.replace(_space(write_study, image_size=40), data_short_side=8)
    assert sample_choices(study.ask(), explicit)["data.image_size"] == 40


def test_a_patch_14_vit_is_given_a_multiple_of_its_patch_size(write_study) -> None:
    """timm refuses, in every forward, a ViT input that is not a multiple of the patch size: the
    derived default for 8 px images is 70 px for DINOv2's patch 14, not 64."""
    config = load_config(
        write_study(
            data={"image_size": None},
            space={"backbone": {"timm": {"model": "vit_small_patch14_dinov2", "weights": "random"}}},
        )
    )
    space = dataclasses.replace(resolve_space(config, get_plugin_manager().registry), data_short_side=8)
    assert sample_choices(optuna.create_study().ask(), space)["data.image_size"] == 70


def test_an_image_size_a_vit_cannot_take_is_a_config_error(write_study, tmp_path: Path) -> None:
    study = write_study(
        data={"image_size": 72},
        space={"backbone": {"timm": {"model": "test_vit", "weights": "random"}}},
    )
    assert_refused_before_work(
        study, tmp_path / "out", ["'timm'", "test_vit", "image_size 72", "multiples of 16 up to 1024"]
    )


@pytest.mark.parametrize(("image_px", "trained_px"), [(16, 64), (300, 160)])
def test_a_study_of_small_images_trains_at_64_and_of_large_ones_at_native(
    tmp_path: Path, write_study, image_px: int, trained_px: int
) -> None:
    data = make_shapes(tmp_path / "shapes", per_class=4, val_per_class=3, size=image_px, seed=0)
    study = write_study(
        data={"train": str(data / "train"), "val": str(data / "val"), "image_size": None},
        space={"freezing": ["linear_probe"]},
        training={"epochs": 1},
        search={"n_trials": 1},
    )
    result = run_study(study, out_dir=tmp_path / "run", progress=False)
    (trial,) = result.study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    recorded = trial.user_attrs["choices"].get("data.image_size")
    assert recorded == (trained_px if trained_px != 160 else None)  # the native size is not recorded
    record = load_record(result.study_dir.trial_dir(trial.number))
    assert record.preprocessing.input_size == trained_px  # what the export and the predictor use
