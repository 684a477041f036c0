"""Finding the labelled images: class folders, or a CSV of path + target(s); and the train/val split."""

from __future__ import annotations

import csv
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tlsearch.data.image_list import ImageList
from tlsearch.data.image_list import check_inside as _check_inside
from tlsearch.data.multilabel import (
    check_training_labels,
    read_multilabel_csv,
    split_multilabel,
    warn_small_validation_labels,
)
from tlsearch.errors import ConfigError, DataError
from tlsearch.preprocessing import display_path

if TYPE_CHECKING:
    from tlsearch.config import DataSettings

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


def scan_folder(root: Path, *, classes: list[str] | None = None) -> ImageList:
    """An ImageFolder: ``root/<class>/<image>``. ``classes`` fixes the class order (for a val folder).

    Class names are the folder names as text (:func:`~tlsearch.preprocessing.display_path`: a name
    that is not valid UTF-8 shows its bytes escaped); image paths are the real ones. Refused, naming
    the folder: a class folder that is a symlink loop, or that resolves to the data root, outside it,
    or into another class folder (its images would get the wrong label); and, when ``classes`` is
    not given (the folder defines the classes), fewer than 2 classes or a class folder with no image.
    An image that is a symlink must resolve inside the data root too (sub-folders that are symlinks
    are not walked): the data is what the folder holds, never a file elsewhere on the machine.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {display_path(root)!r} does not exist or is not a folder")
    folders = _class_folders(root)
    found = sorted(folders)
    defines_classes = classes is None
    if classes is None:
        classes = found
        if len(classes) < 2:
            raise DataError(
                f"{display_path(root)!r} must hold one sub-folder per class (at least 2); found "
                f"{found or 'none'}"
            )
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(
                f"{display_path(root)!r} has classes the training data lacks: {extra}; training classes: {classes}"
            )
    paths: list[Path] = []
    targets: list[int] = []
    empty: list[str] = []
    real_root = root.resolve()
    for index, name in enumerate(classes):
        if name not in folders:
            continue
        images = [
            p
            for p in sorted(folders[name].rglob("*"))
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        ]
        for image in images:
            _check_inside(
                image, real_root, what="the data folder", hint="copy or hard-link the file into the folder"
            )
        if not images:
            empty.append(name)
        paths += images
        targets += [index] * len(images)
    if empty and defines_classes:
        raise DataError(
            f"class folder(s) {', '.join(display_path(root / n) for n in empty)} hold no image "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); a class needs training images (remove the folder "
            "or add images)"
        )
    if not paths:
        raise DataError(
            f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {display_path(root)!r}"
        )
    return ImageList(paths, targets, list(classes))


def _class_folders(root: Path) -> dict[str, Path]:
    """The class folders of ``root`` by class name, each checked to be a real folder of its own
    inside ``root`` (see :func:`scan_folder`)."""
    real_root = root.resolve()
    folders: dict[str, Path] = {}
    resolved: dict[Path, str] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        shown = display_path(entry)
        if entry.is_symlink():
            try:
                target = entry.resolve(strict=True)
            except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
                raise DataError(
                    f"class folder {shown!r} is a broken symlink or a symlink loop; remove it"
                ) from None
        else:
            target = entry.resolve()
        if not target.is_dir():
            continue
        if target == real_root or real_root not in target.parents:
            raise DataError(
                f"class folder {shown!r} resolves to {display_path(target)!r}, "
                f"{'the data folder itself' if target == real_root else 'outside the data folder'} "
                f"{display_path(real_root)!r}: its images would be labelled as one class. Class folders "
                "must be sub-folders of the data folder (copy the images, or point data at a folder "
                "that holds them)"
            )
        for other_target, other in resolved.items():
            if target == other_target or other_target in target.parents or target in other_target.parents:
                raise DataError(
                    f"class folders {display_path(root / other)!r} and {shown!r} overlap (they resolve "
                    f"to {display_path(other_target)!r} and {display_path(target)!r}): an image would "
                    "get two labels"
                )
        name = display_path(entry.name)
        folders[name] = entry
        resolved[target] = name
    return folders


def read_csv(path: Path) -> ImageList:
    """A regression CSV: a header ``path,<target>[,<target>…]``; image paths relative to the CSV's folder.

    A relative path must stay inside the CSV's folder once resolved (no ``../`` out of it, no
    symlink out of it); an absolute path is taken as given, on purpose."""
    path = Path(path)
    real_folder = path.parent.resolve()
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or len(rows[0]) < 2:
        raise DataError(
            f"{display_path(path)!r}: expected a header 'path,target[,target…]' and at least one row"
        )
    header, body = rows[0], rows[1:]
    paths: list[Path] = []
    targets: list[list[float]] = []
    for line_no, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"{display_path(path)!r} line {line_no}: expected {len(header)} columns, got {len(row)}"
            )
        relative = not Path(row[0]).is_absolute()
        image = path.parent / row[0] if relative else Path(row[0])
        if not image.is_file():
            raise DataError(
                f"{display_path(path)!r} line {line_no}: image {display_path(image)!r} does not exist"
            )
        if relative:
            _check_inside(
                image,
                real_folder,
                what="the CSV's folder",
                hint="move the CSV up, or give the image's absolute path on purpose",
                where=f"{display_path(path)!r} line {line_no}: ",
            )
        try:
            values = [float(v) for v in row[1:]]
        except ValueError:
            raise DataError(
                f"{display_path(path)!r} line {line_no}: targets must be numbers, got {row[1:]}"
            ) from None
        paths.append(image)
        targets.append(values)
    return ImageList(paths, targets, None, header[1:])


def split(
    images: ImageList, *, val_fraction: float, seed: int, what: str = "val_fraction"
) -> tuple[ImageList, ImageList]:
    """A deterministic split; stratified by class for classification. ``what`` names the fraction
    in the error for too few images (``test_fraction`` when the test split is carved)."""
    rng = random.Random(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    if images.task == "multilabel":
        train_idx, val_idx = split_multilabel(images, val_fraction=val_fraction, rng=rng)
    elif images.task == "classification":
        by_class: dict[int, list[int]] = {}
        for i, t in enumerate(images.targets):
            by_class.setdefault(int(t), []).append(i)  # type: ignore[call-overload]
        for indices in by_class.values():
            rng.shuffle(indices)
            n_val = max(1, round(len(indices) * val_fraction)) if len(indices) > 1 else 0
            val_idx += indices[:n_val]
            train_idx += indices[n_val:]
    else:
        indices = list(range(len(images)))
        rng.shuffle(indices)
        n_val = max(1, round(len(indices) * val_fraction))
        val_idx, train_idx = indices[:n_val], indices[n_val:]
    if not train_idx or not val_idx:
        raise DataError(f"too few images ({len(images)}) to split with {what}={val_fraction}")
    return images.subset(sorted(train_idx)), images.subset(sorted(val_idx))


#: shifts the seed of the test carve, so it does not draw the same order as the val split
TEST_SEED_OFFSET = 7_919


@dataclass
class Splits:
    """The study's images: ``train`` and ``val`` for the trials, ``test`` (None without one) held out."""

    train: ImageList
    val: ImageList
    test: ImageList | None = None


def load_splits(
    data: DataSettings, *, task: str, seed: int, resolve: Callable[[Path], Path]
) -> tuple[ImageList, ImageList]:
    """The train and validation images a study's ``data`` section describes; ``resolve`` turns the
    section's relative paths into paths relative to the study file. A ``test_fraction`` is carved
    out first, so these never hold a test image (see :func:`load_all_splits`)."""
    splits = load_all_splits(data, task=task, seed=seed, resolve=resolve)
    return splits.train, splits.val


def load_all_splits(data: DataSettings, *, task: str, seed: int, resolve: Callable[[Path], Path]) -> Splits:
    """Train, val and the held-out test images. ``test_fraction`` is carved from the pool that
    ``val`` comes from (the ``folder``, ``csv`` or ``train`` images) before ``val`` is, stratified
    by class and seeded; a ``test`` folder or CSV is read as ``val`` is. A test split that shares
    a file with train or val is a :class:`~tlsearch.errors.ConfigError` naming the file."""
    fraction = data.test_fraction
    test: ImageList | None = None

    def carve(pool: ImageList) -> ImageList:
        nonlocal test
        if fraction is None:
            return pool
        rest, test = split(pool, val_fraction=fraction, seed=seed + TEST_SEED_OFFSET, what="test_fraction")
        return rest

    if task == "regression":
        if data.csv is None:
            raise DataError("task regression needs data.csv (columns path,target…)")
        full = carve(read_csv(resolve(data.csv)))
        if data.val_csv is not None:
            val = read_csv(resolve(data.val_csv))
            if val.target_names != full.target_names:
                raise DataError(
                    f"data.val_csv targets {val.target_names} differ from data.csv's {full.target_names}"
                )
            train = full
        else:
            train, val = split(full, val_fraction=data.val_fraction, seed=seed)
        if data.test is not None:
            test = read_csv(resolve(data.test))
            if test.target_names != full.target_names:
                raise DataError(
                    f"data.test targets {test.target_names} differ from data.csv's {full.target_names}"
                )
        return _checked(Splits(train, val, test))
    if task == "multilabel":
        return _checked(_multilabel_splits(data, carve=carve, seed=seed, resolve=resolve))
    if data.csv is not None:
        raise DataError(
            "data.csv is for tasks regression and multilabel; classification reads class folders "
            "(train/val or folder)"
        )
    if data.folder is not None:
        train, val = split(
            carve(scan_folder(resolve(data.folder))), val_fraction=data.val_fraction, seed=seed
        )
    else:
        assert data.train is not None  # the config guarantees one source
        train = carve(scan_folder(resolve(data.train)))
        if data.val is None:
            train, val = split(train, val_fraction=data.val_fraction, seed=seed)
        else:
            val = scan_folder(resolve(data.val), classes=train.classes)
    if data.test is not None:
        test = scan_folder(resolve(data.test), classes=train.classes)
    warn_small_validation_classes(val)
    return _checked(Splits(train, val, test))


def _multilabel_splits(
    data: DataSettings, *, carve: Callable[[ImageList], ImageList], seed: int, resolve: Callable[[Path], Path]
) -> Splits:
    """A multi-label study's splits from ``data.csv`` (+ ``val_csv`` or ``val_fraction``, + ``test``);
    see :mod:`tlsearch.data.multilabel` for the CSV forms and what is refused."""
    if data.csv is None:
        raise DataError(
            "task multilabel needs data.csv (columns path,labels with labels separated by "
            f"{data.label_delimiter!r}, or path,<label>,<label>… of 0/1)"
        )
    full = carve(
        read_multilabel_csv(resolve(data.csv), vocabulary=data.labels, delimiter=data.label_delimiter)
    )

    def held_out(path: Path, what: str) -> ImageList:
        """A val or test CSV, its labels checked against the training ones and in their order."""
        read = read_multilabel_csv(
            resolve(path),
            vocabulary=data.labels,
            training=_carried(train),
            delimiter=data.label_delimiter,
            what=what,
        )
        return ImageList(read.paths, _reindexed(read, train.classes or []), train.classes, task="multilabel")

    if data.val_csv is not None:
        train = full
        check_training_labels(train, what="data.csv")
        val = held_out(data.val_csv, "data.val_csv")
    else:
        train, val = split(full, val_fraction=data.val_fraction, seed=seed)
        check_training_labels(train, what="the training split of data.csv")
    test = None
    if data.test is not None:
        test = held_out(data.test, "data.test")
    warn_small_validation_labels(val)
    return Splits(train, val, test)


def _carried(images: ImageList) -> list[str]:
    """The labels at least one of ``images`` carries."""
    classes = images.classes or []
    return [c for j, c in enumerate(classes) if any(t[j] > 0.5 for t in images.targets)]  # type: ignore[index]


def _reindexed(images: ImageList, classes: list[str]) -> list[list[float]]:
    """``images``' label vectors over ``classes`` (a val/test CSV may know fewer labels)."""
    own = images.classes or []
    where = {name: own.index(name) for name in classes if name in own}
    return [[t[where[c]] if c in where else 0.0 for c in classes] for t in images.targets]  # type: ignore[index]


#: fewer validation images than this in a class draws a warning: its per-class scores are noise
MIN_VAL_IMAGES_PER_CLASS = 3


def warn_small_validation_classes(val: ImageList, *, minimum: int = MIN_VAL_IMAGES_PER_CLASS) -> list[str]:
    """Warn (once, naming them) about the classes with fewer than ``minimum`` validation images,
    whose recall moves in steps of 1/n and so makes balanced accuracy and macro-F1 noisy; returns
    those classes' names. The split is stratified (:func:`split`), so a small class in validation
    is a small class in the data."""
    if val.task != "classification" or val.classes is None:
        return []
    counts = [0] * len(val.classes)
    for t in val.targets:
        counts[int(t)] += 1  # type: ignore[arg-type]
    small = [f"{name!r} ({n})" for name, n in zip(val.classes, counts, strict=True) if n < minimum]
    if small:
        warnings.warn(
            f"{len(small)} class(es) have fewer than {minimum} validation images: {', '.join(small[:10])}"
            f"{', …' if len(small) > 10 else ''}; their per-class scores (and balanced accuracy, "
            "macro-F1) are noisy: add images or raise data.val_fraction",
            stacklevel=3,
        )
    return [name for name, n in zip(val.classes, counts, strict=True) if n < minimum]


def _checked(splits: Splits) -> Splits:
    """Refuse a test split that shares a file (the same file by its real path) with train or val:
    its score would not be held out."""
    if splits.test is None:
        return splits
    seen = {
        p.resolve(): name
        for name, images in (("val", splits.val), ("train", splits.train))
        for p in images.paths
    }
    for path in splits.test.paths:
        other = seen.get(path.resolve())
        if other is not None:
            raise ConfigError(
                f"data.test shares files with data.{other}, e.g. {display_path(path)!r}: a test image "
                "must never be trained on or selected with; give a test split of other files"
            )
    return splits
