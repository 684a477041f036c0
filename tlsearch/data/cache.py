"""Decode once: every image decoded and resized once into a uint8 array, cached in the study folder.

The cache file's name is a hash of the preprocessing and of every image's path, size and mtime, so
a changed dataset or input size gets a new cache, and all trials and workers of a study share one.
Creation holds a file lock per key (:func:`tlsearch.data.lock.file_lock`): the first worker decodes,
the others wait and then read its result, so no two workers decode the same data. Files are written
to a temporary name and renamed, so a reader never sees a half-written file.

A cache hit is memory-mapped (read-only): the pages are read on first use and shared by every
worker process on the machine through the page cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tlsearch.data.lock import file_lock
from tlsearch.data.sources import ImageList
from tlsearch.errors import DataError
from tlsearch.files import atomic_file
from tlsearch.preprocessing import DataConfig, display_path, prepare_image

#: ``on_progress(done, total)``: images decoded so far, out of ``total``
ProgressCallback = Callable[[int, int], None]
PROGRESS_EVERY = 0.25  # seconds between progress calls while decoding (the first and last always come)

CACHE_VERSION = 1


@dataclass
class DecodedImages:
    """``images``: (N, S, S, 3) uint8 eval-preprocessed; ``targets``: (N,) int64 class indices, or
    (N, T) float32 (regression values, or multilabel 0/1 vectors).

    ``key`` identifies the decoded content (the cache key; empty when built by hand) and is part of
    the feature cache's key; ``path`` is the cache file (None when not cached), which streaming
    data-loader workers memory-map instead of receiving a pickled copy of ``images``.
    """

    images: np.ndarray
    targets: np.ndarray
    source: ImageList
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable images
    key: str = ""
    path: Path | None = None
    kept: list[int] = field(default_factory=list)  # indices into the ImageList that was decoded

    def __len__(self) -> int:
        return len(self.images)


def cache_key(images: ImageList, config: DataConfig) -> str:
    """A hash of the preprocessing and of every image's resolved path, size and mtime: any change to
    the data (an edited, added, removed or renamed file) or to the geometry gives a new key."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "config": config.to_dict()}, sort_keys=True).encode())
    for path in images.paths:
        st = path.stat()
        # as bytes: a file name need not be valid UTF-8 (it then holds surrogates as a str)
        h.update(os.fsencode(path.resolve()) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _targets_array(images: ImageList, keep: list[int]) -> np.ndarray:
    if images.task == "classification":
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
    on_progress: ProgressCallback | None = None,
) -> DecodedImages:
    """Decode ``images`` with the eval geometry of ``config`` (see :func:`tlsearch.preprocessing.prepare_image`).

    ``on_bad_image``: ``error`` raises :class:`DataError` naming the file; ``skip`` leaves it out,
    warns with a count, and records it in ``skipped``. Progress: a tqdm bar (``progress``), or,
    given ``on_progress``, calls ``on_progress(done, total)`` instead (from 0 to ``total``, at most
    every ``PROGRESS_EVERY`` seconds between), e.g. for a console that draws its own. A cache hit
    decodes nothing and reports nothing.
    """
    if on_bad_image not in {"error", "skip"}:
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    key = cache_key(images, config)

    def decode() -> DecodedImages:
        return _decode(
            images,
            config,
            key=key,
            on_bad_image=on_bad_image,
            progress=progress,
            description=description,
            on_progress=on_progress,
        )

    if cache_dir is None:
        return decode()
    cache_dir = Path(cache_dir)
    hit = _load(cache_dir, key, images, config, on_bad_image=on_bad_image)
    if hit is not None:
        return hit
    with file_lock(cache_dir / f"images-{key}.lock"):
        hit = _load(cache_dir, key, images, config, on_bad_image=on_bad_image)  # another worker made it
        if hit is not None:
            return hit
        decoded = decode()
        decoded.path = _save(cache_dir, key, decoded.images, decoded.kept, decoded.skipped)
    return decoded


def _decode(
    images: ImageList,
    config: DataConfig,
    *,
    key: str,
    on_bad_image: str,
    progress: bool,
    description: str,
    on_progress: ProgressCallback | None,
) -> DecodedImages:
    s = config.input_size
    out = np.empty((len(images), s, s, 3), dtype=np.uint8)
    ok = np.ones(len(images), dtype=bool)
    skipped: list[tuple[str, str]] = []

    def work(i: int) -> None:
        try:
            out[i] = prepare_image(images.paths[i], config)
        except (ValueError, MemoryError) as exc:
            shown = display_path(images.paths[i])
            reason = (
                str(exc) if isinstance(exc, ValueError) else f"cannot read image {shown!r}: out of memory"
            )
            if on_bad_image == "error":
                raise DataError(f"{reason} (set data.on_bad_image: skip to leave such files out)") from None
            ok[i] = False
            skipped.append((shown, reason))

    threads = min(8, (os.cpu_count() or 1) * 2)
    total, last = len(images), time.monotonic()
    if on_progress is not None:
        on_progress(0, total)
    with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding and resizing
        for done, _ in enumerate(
            tqdm(
                pool.map(work, range(total)),
                total=total,
                desc=description,
                disable=not progress or on_progress is not None,
                leave=False,
                unit="img",
            ),
            1,
        ):
            if on_progress is not None and (done == total or time.monotonic() - last >= PROGRESS_EVERY):
                on_progress(done, total)
                last = time.monotonic()
    keep = [i for i in range(len(images)) if ok[i]]
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0][0]}", stacklevel=3)
    if not keep:
        raise DataError("no readable image left after skipping unreadable files")
    array = out[keep] if skipped else out
    return DecodedImages(
        array, _targets_array(images, keep), images.subset(keep), sorted(skipped), key=key, kept=keep
    )


def _load(
    cache_dir: Path, key: str, images: ImageList, config: DataConfig, *, on_bad_image: str
) -> DecodedImages | None:
    """The cached entry for ``key``, memory-mapped; None when missing or damaged (then it is rebuilt)."""
    data, meta = cache_dir / f"images-{key}.npy", cache_dir / f"images-{key}.json"
    if not (data.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        array = np.load(data, mmap_mode="r", allow_pickle=False)
        keep = [int(i) for i in info["keep"]]
        skipped = [(str(p), str(r)) for p, r in info["skipped"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    s = config.input_size
    if array.dtype != np.uint8 or array.shape != (len(keep), s, s, 3) or (keep and max(keep) >= len(images)):
        return None
    if skipped and on_bad_image == "error":
        raise DataError(
            f"{skipped[0][0]}: {skipped[0][1]} (cached as unreadable; set data.on_bad_image: skip "
            "to leave such files out)"
        )
    return DecodedImages(
        array, _targets_array(images, keep), images.subset(keep), skipped, key=key, path=data, kept=keep
    )


def _save(
    cache_dir: Path, key: str, array: np.ndarray, keep: list[int], skipped: list[tuple[str, str]]
) -> Path:
    target = cache_dir / f"images-{key}.npy"
    with atomic_file(target, binary=True) as f:
        np.save(f, array, allow_pickle=False)
    with atomic_file(cache_dir / f"images-{key}.json") as g:
        json.dump({"keep": keep, "skipped": skipped}, g)
    return target
