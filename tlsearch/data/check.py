"""Check every image of a study once, before its first trial, so a bad file stops the study once.

Each image is opened and decoded (:func:`tlsearch.preprocessing.load_rgb`: header bounds first,
then the pixels), whatever preprocessing a trial will use later. With ``on_bad_image: error`` the
first bad file raises :class:`~tlsearch.errors.DataError` naming it; with ``skip`` the bad files
are left out of the study's images, counted once and warned about once, so no trial meets them
again. The result is cached in the study's cache folder under a hash of every image's path, size
and mtime (and of the bounds), so reruns and joining workers do not decode everything again.
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

from tlsearch.data.sources import ImageList
from tlsearch.errors import DataError
from tlsearch.files import atomic_file
from tlsearch.preprocessing import MAX_ASPECT_RATIO, MAX_PIXELS, MAX_SIDE, display_path, load_rgb

CHECK_VERSION = 1
PROGRESS_EVERY = 0.25  # seconds between on_progress calls (the first and last always come)


@dataclass
class CheckedImages:
    """The readable images (``images``) and the bad ones left out (``skipped``: (path as text, reason))."""

    images: ImageList
    skipped: list[tuple[str, str]] = field(default_factory=list)


def check_key(images: ImageList) -> str:
    """A hash of the check's bounds and of every image's real path (as bytes), size and mtime."""
    h = hashlib.sha256()
    bounds = {"v": CHECK_VERSION, "side": MAX_SIDE, "pixels": MAX_PIXELS, "aspect": MAX_ASPECT_RATIO}
    h.update(json.dumps(bounds, sort_keys=True).encode())
    for path in images.paths:
        st = path.stat()
        h.update(os.fsencode(path.resolve()) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def check_images(
    images: ImageList,
    *,
    on_bad_image: str = "error",
    cache_dir: Path | None = None,
    description: str = "checking images",
    on_progress: Callable[[int, int], None] | None = None,
) -> CheckedImages:
    """Decode every image of ``images`` once; see the module docstring for ``on_bad_image``.

    ``on_progress(done, total)`` reports the progress (from 0 to ``total``). Raises
    :class:`DataError` naming the file (``error``), or when no readable image is left, or when a
    class has none left (``skip``).
    """
    if on_bad_image not in {"error", "skip"}:
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    key = check_key(images)
    record = None if cache_dir is None else Path(cache_dir) / f"checked-{key}.json"
    bad = _load(record, len(images))
    if bad is None:
        bad = _check(images, stop_at_first=on_bad_image == "error", on_progress=on_progress)
        if record is not None and (on_bad_image == "skip" or not bad):
            _save(record, bad)
    if bad and on_bad_image == "error":
        reason = bad[0][2]  # names the file
        raise DataError(f"{reason} (set data.on_bad_image: skip to leave such files out)")
    if not bad:
        return CheckedImages(images)
    left_out = {i for i, _, _ in bad}
    keep = [i for i in range(len(images)) if i not in left_out]
    skipped = [(path, reason) for _, path, reason in bad]
    warnings.warn(
        f"{description}: skipped {len(skipped)} unreadable image(s) of {len(images)}, e.g. {skipped[0][1]}",
        stacklevel=2,
    )
    if not keep:
        raise DataError(f"{description}: no readable image left after skipping unreadable files")
    kept = images.subset(keep)
    if kept.task == "classification" and kept.classes is not None:
        present = {int(t) for t in kept.targets}  # type: ignore[arg-type]
        had = {int(t) for t in images.targets}  # type: ignore[arg-type]
        gone = [name for i, name in enumerate(kept.classes) if i in had and i not in present]
        if gone:
            raise DataError(f"{description}: class(es) {gone} have no readable image left after skipping")
    return CheckedImages(kept, skipped)


def _check(
    images: ImageList, *, stop_at_first: bool, on_progress: Callable[[int, int], None] | None
) -> list[tuple[int, str, str]]:
    """(index, path as text, reason) of each image that does not decode, in order."""
    bad: list[tuple[int, str, str]] = []

    def work(i: int) -> None:
        if stop_at_first and bad:
            return
        try:
            load_rgb(images.paths[i])
        except ValueError as exc:
            bad.append((i, display_path(images.paths[i]), str(exc)))

    total, last = len(images), time.monotonic()
    if on_progress is not None:
        on_progress(0, total)
    threads = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding
        for done, _ in enumerate(pool.map(work, range(total)), 1):
            if on_progress is not None and (done == total or time.monotonic() - last >= PROGRESS_EVERY):
                on_progress(done, total)
                last = time.monotonic()
    return sorted(bad)


def _load(record: Path | None, n: int) -> list[tuple[int, str, str]] | None:
    """The cached result, or None when there is none or it is damaged (then the check runs again)."""
    if record is None or not record.is_file():
        return None
    try:
        bad = [(int(i), str(p), str(r)) for i, p, r in json.loads(record.read_text())["bad"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return bad if all(0 <= i < n for i, _, _ in bad) else None


def _save(record: Path, bad: list[tuple[int, str, str]]) -> None:
    with atomic_file(record) as f:
        json.dump({"bad": bad}, f)
