"""Multi-label data: a CSV of image paths and label sets, its vocabulary, and a stratified split.

Two CSV forms, told apart by the header:

* ``path,labels`` — the second column holds the image's labels separated by ``|`` (the default
  :data:`DEFAULT_DELIMITER`, ``data.label_delimiter`` to change it): ``img/1.png,cat|dog``. The
  ``|`` is the default because it never appears in ordinary label names and needs no CSV quoting
  (a space or a comma would). Spaces around each label are stripped; a label named twice in a row
  counts once.
* ``path,<label>,<label>…`` — one column per label holding ``0`` or ``1``.

An **empty label set is allowed** (an empty ``labels`` cell, or a row of zeros): in multi-label
data it is a real answer, "none of these labels", and such images teach the model what a negative
looks like. It is refused only where it means nothing: a label column header that is empty.

The vocabulary is ``data.labels`` when the study gives it (then a label outside it is an error
naming the row), else the sorted labels of the training CSV. Refused before any trial, each naming
the file, the line and the label: an unknown label, a label of the validation or test CSV that no
training image has (it could never be learnt, only scored), and a label with no training image
(a vocabulary label nobody carries, or one whose every image went to validation).

Images: as :func:`tlsearch.data.sources.read_csv` (relative to the CSV's folder, never out of it).
"""

from __future__ import annotations

import csv
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from tlsearch.data.image_list import ImageList, check_inside
from tlsearch.errors import DataError
from tlsearch.preprocessing import display_path

#: separates the labels of one ``labels`` cell
DEFAULT_DELIMITER = "|"
#: the header of the second column in the ``path,labels`` form
LABELS_COLUMN = "labels"
#: fewer validation positives than this for a label draws a warning: its AP and F1 are noise
MIN_VAL_POSITIVES = 3

__all__ = [
    "DEFAULT_DELIMITER",
    "check_training_labels",
    "read_multilabel_csv",
    "split_multilabel",
    "warn_small_validation_labels",
]


def read_multilabel_csv(
    path: Path,
    *,
    vocabulary: Sequence[str] | None = None,
    delimiter: str = DEFAULT_DELIMITER,
    training: Sequence[str] | None = None,
    what: str = "data.csv",
) -> ImageList:
    """The images and 0/1 label vectors of a multi-label CSV (module doc for the two forms).

    ``vocabulary``: the study's ``data.labels`` (a label outside it is refused). ``training``: the
    training split's labels, for a validation or test CSV: a label it lacks is refused as present
    only here (``what`` names the CSV's field in the message). The result's ``classes`` are the
    vocabulary, else ``training``, else the CSV's own labels, sorted."""
    path = Path(path)
    shown = display_path(path)
    if not delimiter or delimiter in {",", "\n", '"'}:
        raise DataError(f"data.label_delimiter {delimiter!r} is not valid: give one such as '|' or ' '")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or len(rows[0]) < 2 or rows[0][0].strip() != "path":
        raise DataError(
            f"{what} {shown!r}: expected a header 'path,labels' (labels separated by {delimiter!r}) or "
            "'path,<label>,<label>…' (one 0/1 column per label), and at least one row"
        )
    header = [h.strip() for h in rows[0]]
    one_column = len(header) == 2 and header[1] == LABELS_COLUMN
    if not one_column:
        empty = [i + 1 for i, h in enumerate(header[1:], start=1) if not h]
        if empty:
            raise DataError(f"{what} {shown!r}: label column(s) {empty} have an empty header")
        twice = sorted({h for h in header[1:] if header[1:].count(h) > 1})
        if twice:
            raise DataError(f"{what} {shown!r}: label column(s) {twice} appear twice in the header")
    real_folder = path.parent.resolve()
    paths: list[Path] = []
    label_sets: list[tuple[int, set[str]]] = []
    for line_no, row in enumerate(rows[1:], start=2):
        where = f"{what} {shown!r} line {line_no}"
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{where}: expected {len(header)} columns, got {len(row)}")
        image = _image(path, row[0], where=where, real_folder=real_folder)
        if one_column:
            labels = {lab.strip() for lab in row[1].split(delimiter)} - {""}
        else:
            bad = [(h, v) for h, v in zip(header[1:], row[1:], strict=True) if v.strip() not in {"0", "1"}]
            if bad:
                raise DataError(f"{where}: label columns hold 0 or 1, got {bad[0][0]}={bad[0][1]!r}")
            labels = {h for h, v in zip(header[1:], row[1:], strict=True) if v.strip() == "1"}
        paths.append(image)
        label_sets.append((line_no, labels))
    if not paths:
        raise DataError(f"{what} {shown!r} has no rows")
    for known, kind in ((vocabulary, "data.labels"), (training, "the training data")):
        if known is None:
            continue
        allowed = set(known)
        for line_no, labels in label_sets:
            unknown = sorted(labels - allowed)
            if unknown:
                hint = (
                    "add it to data.labels or fix the row"
                    if kind == "data.labels"
                    else "it is present only here: a label needs training images (move some to the training CSV)"
                )
                raise DataError(
                    f"{what} {shown!r} line {line_no}: label {unknown[0]!r} is not in {kind} "
                    f"({', '.join(sorted(allowed)) or 'none'}); {hint}"
                )
    if vocabulary is not None:
        classes = list(vocabulary)
    elif training is not None:
        classes = list(training)
    else:
        found = set().union(*(labels for _, labels in label_sets))
        if not one_column:
            found |= set(header[1:])
        classes = sorted(found)
    if not classes:
        raise DataError(f"{what} {shown!r}: no image carries any label; multi-label data needs labels")
    index = {name: i for i, name in enumerate(classes)}
    targets: list[list[float]] = []
    for _, labels in label_sets:
        vector = [0.0] * len(classes)
        for lab in labels:
            vector[index[lab]] = 1.0
        targets.append(vector)
    return ImageList(paths, targets, classes, task="multilabel")


def _image(csv_path: Path, cell: str, *, where: str, real_folder: Path) -> Path:
    relative = not Path(cell).is_absolute()
    image = csv_path.parent / cell if relative else Path(cell)
    if not image.is_file():
        raise DataError(f"{where}: image {display_path(image)!r} does not exist")
    if relative:
        check_inside(
            image,
            real_folder,
            what="the CSV's folder",
            hint="move the CSV up, or give the image's absolute path on purpose",
            where=f"{where}: ",
        )
    return image


def _vectors(images: ImageList) -> list[list[float]]:
    """A multi-label list's targets: one 0/1 vector per image."""
    return cast(list[list[float]], images.targets)


def _positives(images: ImageList) -> list[int]:
    counts = [0] * images.num_outputs
    for vector in _vectors(images):
        for j, v in enumerate(vector):
            counts[j] += v > 0.5
    return counts


def split_multilabel(
    images: ImageList, *, val_fraction: float, rng: random.Random
) -> tuple[list[int], list[int]]:
    """Train and val indices, stratified by each image's rarest label.

    Simple on purpose (iterative stratification balances every label at once, at much more code):
    each image joins the group of its rarest label (the label with the fewest images in the whole
    set; ties by vocabulary order; images without labels form their own group), and each group is
    split like a class of a single-label split: ``round(n · val_fraction)`` (at least 1) to val,
    a group of one stays in train. Rare labels are then spread over both splits, which is where a
    random split goes wrong. Finally, a label left with no training image gets one of its val images
    moved back to train, so every label can be learnt."""
    counts = _positives(images)
    vectors = _vectors(images)
    groups: dict[int, list[int]] = {}
    for i, vector in enumerate(vectors):
        present = [j for j, v in enumerate(vector) if v > 0.5]
        key = min(present, key=lambda j: (counts[j], j)) if present else -1
        groups.setdefault(key, []).append(i)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for key in sorted(groups):
        indices = groups[key]
        rng.shuffle(indices)
        n_val = max(1, round(len(indices) * val_fraction)) if len(indices) > 1 else 0
        val_idx += indices[:n_val]
        train_idx += indices[n_val:]
    in_train = [0] * len(counts)
    for i in train_idx:
        for j, v in enumerate(vectors[i]):
            in_train[j] += v > 0.5
    for j in range(len(counts)):
        if counts[j] and not in_train[j]:
            moved = next(i for i in val_idx if vectors[i][j] > 0.5)
            val_idx.remove(moved)
            train_idx.append(moved)
            for k, v in enumerate(vectors[moved]):
                in_train[k] += v > 0.5
    return train_idx, val_idx


def check_training_labels(train: ImageList, *, what: str = "the training split") -> None:
    """Refuse labels of the vocabulary that no training image carries, naming them: the model
    could never learn them, and their validation scores would be noise."""
    missing = [name for name, n in zip(train.classes or [], _positives(train), strict=True) if n == 0]
    if missing:
        raise DataError(
            f"label(s) {missing[:10]} have no training image in {what}; give each label training "
            "images, or drop it from data.labels"
        )


def warn_small_validation_labels(val: ImageList, *, minimum: int = MIN_VAL_POSITIVES) -> list[str]:
    """Warn (once, naming them) about labels with fewer than ``minimum`` validation positives; their
    AP and F1 (and the tuned threshold) rest on a handful of images. Returns their names."""
    small = [(name, n) for name, n in zip(val.classes or [], _positives(val), strict=True) if n < minimum]
    if small:
        shown = ", ".join(f"{name!r} ({n})" for name, n in small[:10])
        warnings.warn(
            f"{len(small)} label(s) have fewer than {minimum} validation images: {shown}"
            f"{', …' if len(small) > 10 else ''}; their AP, F1 and tuned threshold are noisy: add "
            "images or raise data.val_fraction",
            stacklevel=3,
        )
    return [name for name, _ in small]
