"""Decode once: every image decoded and resized once into a uint8 array, cached in the study folder.

The cache file's name is a hash of the preprocessing and of every image's path, size and mtime, so
a changed dataset or input size gets a new cache, and all trials and workers of a study share one.
Files are written to a temporary name and renamed, so concurrent writers are safe (the last rename
wins with identical content).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tlsearch.data.sources import ImageList
from tlsearch.errors import DataError
from tlsearch.preprocessing import DataConfig, prepare_image

CACHE_VERSION = 1


@dataclass
class DecodedImages:
    """``images``: (N, S, S, 3) uint8 eval-preprocessed; ``targets``: (N,) int64 or (N, T) float32."""

    images: np.ndarray
    targets: np.ndarray
    source: ImageList
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable images

    def __len__(self) -> int:
        return len(self.images)


def cache_key(images: ImageList, config: DataConfig) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "config": config.to_dict()}, sort_keys=True).encode())
    for path in images.paths:
        st = path.stat()
        h.update(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _targets_array(images: ImageList, keep: list[int]) -> np.ndarray:
    if images.classes is not None:
        return np.asarray([images.targets[i] for i in keep], dtype=np.int64)
    return np.asarray([images.targets[i] for i in keep], dtype=np.float32).reshape(len(keep), -1)


def decode_images(
    images: ImageList,
    config: DataConfig,
    *,
    cache_dir: Path | None = None,
    on_bad_image: str = "error",
    progress: bool = True,
    description: str = "decoding images",
) -> DecodedImages:
    """Decode ``images`` with the eval geometry of ``config`` (see :func:`tlsearch.preprocessing.prepare_image`).

    ``on_bad_image``: ``error`` raises :class:`DataError` naming the file; ``skip`` leaves it out,
    warns with a count, and records it in ``skipped``.
    """
    if on_bad_image not in {"error", "skip"}:
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    key = cache_key(images, config) if cache_dir is not None else ""
    if cache_dir is not None:
        cached = _load(Path(cache_dir), key)
        if cached is not None:
            array, keep, skipped = cached
            return DecodedImages(array, _targets_array(images, keep), images.subset(keep), skipped)

    s = config.input_size
    out = np.empty((len(images), s, s, 3), dtype=np.uint8)
    ok = np.ones(len(images), dtype=bool)
    skipped: list[tuple[str, str]] = []

    def work(i: int) -> None:
        try:
            out[i] = prepare_image(images.paths[i], config)
        except ValueError as exc:
            if on_bad_image == "error":
                raise DataError(f"{exc} (set data.on_bad_image: skip to leave such files out)") from None
            ok[i] = False
            skipped.append((str(images.paths[i]), str(exc)))

    threads = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding and resizing
        for _ in tqdm(pool.map(work, range(len(images))), total=len(images), desc=description,
                      disable=not progress, leave=False, unit="img"):
            pass
    keep = [i for i in range(len(images)) if ok[i]]
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0][0]}", stacklevel=2)
    if not keep:
        raise DataError("no readable image left after skipping unreadable files")
    array = out[keep] if skipped else out
    if cache_dir is not None:
        _save(Path(cache_dir), key, array, keep, skipped)
    return DecodedImages(array, _targets_array(images, keep), images.subset(keep), sorted(skipped))


def _load(cache_dir: Path, key: str) -> tuple[np.ndarray, list[int], list[tuple[str, str]]] | None:
    data, meta = cache_dir / f"images-{key}.npy", cache_dir / f"images-{key}.json"
    if not (data.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        array = np.load(data, mmap_mode=None, allow_pickle=False)
    except (OSError, ValueError):
        return None  # a damaged cache is rebuilt
    return array, list(info["keep"]), [tuple(x) for x in info["skipped"]]  # type: ignore[misc]


def _save(cache_dir: Path, key: str, array: np.ndarray, keep: list[int], skipped: list[tuple[str, str]]) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".npy.tmp", delete=False) as f:
        np.save(f, array, allow_pickle=False)
    os.replace(f.name, cache_dir / f"images-{key}.npy")
    with tempfile.NamedTemporaryFile("w", dir=cache_dir, suffix=".json.tmp", delete=False) as f:
        json.dump({"keep": keep, "skipped": skipped}, f)
    os.replace(f.name, cache_dir / f"images-{key}.json")
