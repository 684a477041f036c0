"""``val_fraction`` splits are stratified by class, and a class with few validation images warns."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from tlsearch.data.sources import ImageList, split, warn_small_validation_classes


def _imbalanced(majority: int = 100, minority: int = 10) -> ImageList:
    targets = [0] * majority + [1] * minority
    return ImageList([Path(f"img{i}.png") for i in range(len(targets))], targets, ["common", "rare"])


def test_val_fraction_keeps_each_class_share_on_a_ten_to_one_set() -> None:
    """Bug caught: a plain random split, which can leave the rare class out of validation."""
    for seed in range(5):
        train, val = split(_imbalanced(), val_fraction=0.2, seed=seed)
        assert sorted(val.targets).count(1) == 2 and sorted(val.targets).count(0) == 20  # type: ignore[arg-type]
        assert len(train) == 88


def test_a_class_with_few_validation_images_warns_naming_it() -> None:
    """Bug caught: the warning counting training images, or naming the wrong class."""
    _, val = split(_imbalanced(), val_fraction=0.2, seed=0)
    with pytest.warns(UserWarning, match=r"'rare' \(2\)") as record:
        assert warn_small_validation_classes(val) == ["rare"]
    assert "common" not in str(record[0].message)
    assert "val_fraction" in str(record[0].message)


def test_no_warning_when_every_class_has_enough_validation_images() -> None:
    _, val = split(_imbalanced(100, 50), val_fraction=0.2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_small_validation_classes(val) == []
