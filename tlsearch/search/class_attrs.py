"""A classification trial's per-class attributes (``confusion``, ``worst_images``) from the
trainer's results, with the worst images' files named relative to the study's data root, so that
the record stays readable when the data folder moves and the report can find the files again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlsearch.config import StudyConfig
from tlsearch.data import DecodedImages
from tlsearch.train.class_results import ClassResults

__all__ = ["class_attrs", "data_root"]


def data_root(config: StudyConfig) -> Path:
    """The folder the validation images are listed from: ``data.val``, else the ``folder`` or
    ``train`` folder they are split from; for a CSV, the folder of ``val_csv`` or ``csv`` (whose
    relative paths are resolved from there)."""
    data = config.data
    if data.csv is not None:
        return config.resolve_path(data.val_csv if data.val_csv is not None else data.csv).parent
    folder = data.val or data.folder or data.train
    assert folder is not None  # the config guarantees one source
    return config.resolve_path(folder)


def evaluated_paths(val: DecodedImages) -> list[Path]:
    """The files of the decoded validation images, in the order the trainer evaluates them."""
    paths = val.source.paths
    return [paths[i] for i in val.kept] if val.kept else list(paths)


def class_attrs(
    results: ClassResults, *, val: DecodedImages, labels: list[str], config: StudyConfig
) -> dict[str, Any]:
    """The ``confusion`` and ``worst_images`` user attributes of a trial (see
    :mod:`tlsearch.train.class_results`)."""
    return results.attrs(paths=evaluated_paths(val), labels=labels, root=data_root(config))
