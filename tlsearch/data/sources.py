"""Finding the labelled images: class folders, or a CSV of path + target(s); and the train/val split."""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tlsearch.errors import DataError

if TYPE_CHECKING:
    from tlsearch.config import DataSettings

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


@dataclass
class ImageList:
    """Image files with their targets: class indices (classification) or value lists (regression)."""

    paths: list[Path]
    targets: list[int] | list[list[float]]
    classes: list[str] | None = None  # classification only
    target_names: list[str] = field(default_factory=list)  # regression: the CSV's target columns

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.classes is not None else len(self.target_names)

    def subset(self, indices: list[int]) -> ImageList:
        return ImageList(
            [self.paths[i] for i in indices],
            [self.targets[i] for i in indices],  # type: ignore[arg-type]
            self.classes,
            self.target_names,
        )


def scan_folder(root: Path, *, classes: list[str] | None = None) -> ImageList:
    """An ImageFolder: ``root/<class>/<image>``. ``classes`` fixes the class order (for a val folder)."""
    root = Path(root)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
        if len(classes) < 2:
            raise DataError(
                f"{str(root)!r} must hold one sub-folder per class (at least 2); found {found or 'none'}"
            )
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(
                f"{str(root)!r} has classes the training data lacks: {extra}; training classes: {classes}"
            )
    paths: list[Path] = []
    targets: list[int] = []
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                paths.append(p)
                targets.append(index)
    if not paths:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {str(root)!r}")
    return ImageList(paths, targets, list(classes))


def read_csv(path: Path) -> ImageList:
    """A regression CSV: a header ``path,<target>[,<target>…]``; image paths relative to the CSV's folder."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or len(rows[0]) < 2:
        raise DataError(f"{str(path)!r}: expected a header 'path,target[,target…]' and at least one row")
    header, body = rows[0], rows[1:]
    paths: list[Path] = []
    targets: list[list[float]] = []
    for line_no, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{str(path)!r} line {line_no}: expected {len(header)} columns, got {len(row)}")
        image = Path(row[0]) if Path(row[0]).is_absolute() else path.parent / row[0]
        if not image.is_file():
            raise DataError(f"{str(path)!r} line {line_no}: image {str(image)!r} does not exist")
        try:
            values = [float(v) for v in row[1:]]
        except ValueError:
            raise DataError(f"{str(path)!r} line {line_no}: targets must be numbers, got {row[1:]}") from None
        paths.append(image)
        targets.append(values)
    return ImageList(paths, targets, None, header[1:])


def split(images: ImageList, *, val_fraction: float, seed: int) -> tuple[ImageList, ImageList]:
    """A deterministic split; stratified by class for classification."""
    rng = random.Random(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    if images.classes is not None:
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
        raise DataError(f"too few images ({len(images)}) to split with val_fraction={val_fraction}")
    return images.subset(sorted(train_idx)), images.subset(sorted(val_idx))


def load_splits(
    data: DataSettings, *, task: str, seed: int, resolve: Callable[[Path], Path]
) -> tuple[ImageList, ImageList]:
    """The train and validation images a study's ``data`` section describes; ``resolve`` turns the
    section's relative paths into paths relative to the study file."""
    if task == "regression":
        if data.csv is None:
            raise DataError("task regression needs data.csv (columns path,target…)")
        full = read_csv(resolve(data.csv))
        if data.val_csv is not None:
            val = read_csv(resolve(data.val_csv))
            if val.target_names != full.target_names:
                raise DataError(
                    f"data.val_csv targets {val.target_names} differ from data.csv's {full.target_names}"
                )
            return full, val
        return split(full, val_fraction=data.val_fraction, seed=seed)
    if data.csv is not None:
        raise DataError(
            "data.csv is for task regression; classification reads class folders (train/val or folder)"
        )
    if data.folder is not None:
        return split(scan_folder(resolve(data.folder)), val_fraction=data.val_fraction, seed=seed)
    assert data.train is not None  # the config guarantees one source
    train = scan_folder(resolve(data.train))
    if data.val is None:
        return split(train, val_fraction=data.val_fraction, seed=seed)
    return train, scan_folder(resolve(data.val), classes=train.classes)
