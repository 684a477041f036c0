"""Which files to predict: the given files, and the images inside the given folders (recursively)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"})


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files given explicitly are kept whatever their extension (a non-image is then reported as such);
    folders contribute their files with an image extension, recursively, sorted. A path that does
    not exist is kept so the prediction reports it."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(
                sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            )
        else:
            found.append(p)
    return found
