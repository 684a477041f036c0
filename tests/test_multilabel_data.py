"""Multi-label data: both CSV forms, the vocabulary, the stratified split, and bad input refused
before any trial (naming the file, the line and the label), with nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import assert_refused_before_work
from tlsearch.config import load_config
from tlsearch.data import load_all_splits
from tlsearch.data.multilabel import read_multilabel_csv, split_multilabel
from tlsearch.errors import DataError
from tlsearch.search import run_study


def _images(folder: Path, n: int) -> list[str]:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), i * 7 % 255, np.uint8)).save(folder / "img" / f"{i}.png")
        names.append(f"img/{i}.png")
    return names


def _csv(folder: Path, name: str, rows: list[str], header: str = "path,labels") -> Path:
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_the_labels_column_form_gives_sorted_vocabulary_and_allows_an_empty_set(tmp_path: Path) -> None:
    names = _images(tmp_path, 3)
    csv = _csv(tmp_path, "a.csv", [f"{names[0]},dog|cat", f"{names[1]},", f"{names[2]}, cat | dog |cat"])
    images = read_multilabel_csv(csv)
    assert images.task == "multilabel"
    assert images.classes == ["cat", "dog"]
    assert images.targets == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]  # spaces stripped, a repeat counts once
    assert images.num_outputs == 2


def test_the_zero_one_column_form_and_another_delimiter(tmp_path: Path) -> None:
    names = _images(tmp_path, 2)
    csv = _csv(tmp_path, "b.csv", [f"{names[0]},1,0,1", f"{names[1]},0,0,0"], header="path,zebra,ant,cat")
    images = read_multilabel_csv(csv)
    assert images.classes == ["ant", "cat", "zebra"]
    assert images.targets == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    spaced = _csv(tmp_path, "c.csv", [f"{names[0]},cat dog"])
    assert read_multilabel_csv(spaced, delimiter=" ").classes == ["cat", "dog"]
    assert read_multilabel_csv(spaced).classes == ["cat dog"]  # the default delimiter is '|'


@pytest.mark.parametrize(
    ("rows", "header", "kwargs", "fragments"),
    [
        (["{0},cat|bird"], "path,labels", {"vocabulary": ["cat", "dog"]}, ["line 2", "'bird'", "cat, dog"]),
        (["{0},1,2"], "path,cat,dog", {}, ["line 2", "0 or 1", "dog='2'"]),
        (["{0},cat", "img/missing.png,dog"], "path,labels", {}, ["line 3", "does not exist"]),
        (["{0},cat"], "file,labels", {}, ["expected a header"]),
        (["{0},1,1"], "path,cat,cat", {}, ["'cat'", "twice"]),
    ],
)
def test_bad_rows_name_the_file_line_and_value(
    tmp_path: Path, rows: list[str], header: str, kwargs: dict[str, Any], fragments: list[str]
) -> None:
    names = _images(tmp_path, 1)
    csv = _csv(tmp_path, "bad.csv", [r.format(names[0]) for r in rows], header=header)
    with pytest.raises(DataError) as err:
        read_multilabel_csv(csv, **kwargs)
    assert "bad.csv" in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_the_split_is_stratified_by_the_rarest_label_and_keeps_every_label_in_train(tmp_path: Path) -> None:
    import random

    from tlsearch.data.sources import ImageList

    # 40 common-only images, 4 with the rare label, 2 with a very rare one, 1 with a unique one
    vectors = [[1.0, 0.0, 0.0, 0.0]] * 40 + [[1.0, 1.0, 0.0, 0.0]] * 4 + [[0.0, 0.0, 1.0, 0.0]] * 2
    vectors += [[1.0, 0.0, 0.0, 1.0]]
    images = ImageList(
        [Path(f"{i}.png") for i in range(len(vectors))], vectors, list("abcd"), task="multilabel"
    )
    for seed in range(5):
        train, val = split_multilabel(images, val_fraction=0.25, rng=random.Random(seed))
        assert sorted(train + val) == list(range(len(vectors)))
        rare_val = [i for i in val if vectors[i][1]]
        assert len(rare_val) == 1  # round(4 · 0.25) of the rare label's group, whatever the seed
        assert sum(vectors[i][2] for i in val) == 1 and sum(vectors[i][2] for i in train) == 1
        assert all(not vectors[i][3] for i in val)  # a label with one image stays in train
        assert len([i for i in val if vectors[i] == [1.0, 0.0, 0.0, 0.0]]) == 10


def _study(tmp_path: Path, data: dict[str, Any], **extra: Any) -> Path:
    study = tmp_path / "study.yaml"
    body: dict[str, Any] = {
        "name": "ml",
        "task": "multilabel",
        "data": {"image_size": 32, **data},
        "space": {
            "backbone": {"timm": {"model": "test_resnet", "weights": "random"}},
            "head": ["linear"],
            "freezing": ["full_finetune"],
        },
        "training": {"epochs": 1, "batch_size": 8},
        "search": {"n_trials": 1},
        "export": {"enabled": False},
    }
    for key, value in extra.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    study.write_text(yaml.safe_dump(body))
    return study


def _refused_by_data(study: Path, out: Path, fragments: list[str]) -> None:
    with pytest.raises(DataError) as err:
        run_study(study, out_dir=out, progress=False)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    assert not out.exists()  # nothing written


def test_a_label_only_in_val_is_refused_before_any_trial(tmp_path: Path) -> None:
    names = _images(tmp_path, 6)
    train = _csv(
        tmp_path, "train.csv", [f"{n},cat" if i % 2 else f"{n},dog" for i, n in enumerate(names[:4])]
    )
    val = _csv(tmp_path, "val.csv", [f"{names[4]},cat", f"{names[5]},dog|owl"])
    study = _study(tmp_path, {"csv": str(train), "val_csv": str(val)})
    _refused_by_data(study, tmp_path / "out", ["val.csv", "line 3", "'owl'", "present only here"])


def test_a_label_with_no_training_image_is_refused(tmp_path: Path) -> None:
    names = _images(tmp_path, 6)
    rows = [f"{n},1,0,0" if i % 2 else f"{n},0,1,0" for i, n in enumerate(names)]
    csv = _csv(tmp_path, "all.csv", rows, header="path,cat,dog,owl")
    study = _study(tmp_path, {"csv": str(csv), "val_fraction": 0.3})
    _refused_by_data(study, tmp_path / "out", ["['owl']", "no training image"])
    # and a vocabulary label nobody carries, from data.labels
    plain = _csv(tmp_path, "plain.csv", [f"{n},cat" if i % 2 else f"{n},dog" for i, n in enumerate(names)])
    study = _study(tmp_path, {"csv": str(plain), "val_fraction": 0.3, "labels": ["cat", "dog", "emu"]})
    _refused_by_data(study, tmp_path / "out2", ["['emu']", "no training image"])


def test_an_unknown_label_against_data_labels_names_the_row(tmp_path: Path) -> None:
    names = _images(tmp_path, 4)
    csv = _csv(
        tmp_path, "v.csv", [f"{names[0]},cat", f"{names[1]},dog", f"{names[2]},cta", f"{names[3]},cat"]
    )
    study = _study(tmp_path, {"csv": str(csv), "labels": ["cat", "dog"]})
    _refused_by_data(study, tmp_path / "out", ["v.csv", "line 4", "'cta'", "data.labels"])


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ({"search": {"metric": "accuracy"}}, ["search.metric", "'accuracy'", "map, micro_f1, macro_f1"]),
        ({"training": {"loss": "cross_entropy"}}, ["cross_entropy", "auto, bce"]),
        ({"space": {"regularizers": {"label_smoothing": {}}}}, ["label_smoothing", "multilabel"]),
        ({"space": {"regularizers": {"logit_adjustment": {}}}}, ["logit_adjustment", "classification"]),
        ({"space": {"regularizers": {"balanced_sampler": {}}}}, ["balanced_sampler", "classification"]),
        ({"export": {"target_precision": 0.9}}, ["target_precision", "binary classification"]),
    ],
)
def test_config_errors_for_the_task_come_before_any_work(
    tmp_path: Path, extra: dict[str, Any], fragments: list[str]
) -> None:
    names = _images(tmp_path, 4)
    csv = _csv(tmp_path, "d.csv", [f"{n},cat" if i % 2 else f"{n},dog" for i, n in enumerate(names)])
    study = _study(tmp_path, {"csv": str(csv)})
    body = yaml.safe_load(study.read_text())
    for key, value in extra.items():
        if key == "space":
            body["space"].update(value)
        else:
            body.setdefault(key, {}).update(value)
    study.write_text(yaml.safe_dump(body))
    assert_refused_before_work(study, tmp_path / "out", fragments)


def test_load_all_splits_reads_a_test_csv_over_the_training_vocabulary(tmp_path: Path) -> None:
    names = _images(tmp_path, 10)
    csv = _csv(
        tmp_path, "all.csv", [f"{n},cat|dog" if i % 3 else f"{n},dog" for i, n in enumerate(names[:8])]
    )
    test = _csv(tmp_path, "test.csv", [f"{names[8]},dog", f"{names[9]},"])
    config = load_config(_study(tmp_path, {"csv": str(csv), "test": str(test), "val_fraction": 0.25}))
    splits = load_all_splits(config.data, task="multilabel", seed=0, resolve=config.resolve_path)
    assert splits.train.classes == ["cat", "dog"] and splits.test is not None
    assert splits.test.classes == ["cat", "dog"]
    assert splits.test.targets == [[0.0, 1.0], [0.0, 0.0]]  # reindexed to the training vocabulary
