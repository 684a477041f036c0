"""Decode once: the uint8 cache is shared, created once under concurrency, and invalidated by data changes."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tlsearch.data.cache as cache_module
from tlsearch.data import cache_key, decode_images, file_lock, scan_folder
from tlsearch.data.lock import LockTimeout
from tlsearch.errors import DataError
from tlsearch.preprocessing import DataConfig

CONFIG = DataConfig(input_size=32)


@pytest.fixture()
def images(shapes_dir: Path, tmp_path: Path):
    root = tmp_path / "data"
    shutil.copytree(shapes_dir / "train", root)
    return scan_folder(root)


@pytest.fixture()
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = cache_module.prepare_image

    def counting(path, config):
        calls.append(str(path))
        return real(path, config)

    monkeypatch.setattr(cache_module, "prepare_image", counting)
    return calls


def test_second_call_reads_the_cache_memory_mapped(images, tmp_path, count_decodes):
    first = decode_images(images, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    assert len(count_decodes) == len(images)
    second = decode_images(images, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    assert len(count_decodes) == len(images)  # nothing decoded again
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.targets, second.targets)
    assert first.key == second.key == cache_key(images, CONFIG)
    assert second.path is not None and second.path.is_file()


def test_concurrent_workers_decode_once(images, tmp_path, count_decodes):
    barrier = threading.Barrier(4)
    results = []

    def worker() -> None:
        barrier.wait()
        results.append(decode_images(images, CONFIG, cache_dir=tmp_path / "cache", progress=False))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert len(count_decodes) == len(images), "two workers decoded the same data"
    for r in results[1:]:
        np.testing.assert_array_equal(r.images, results[0].images)


def test_changed_image_invalidates_the_cache(images, tmp_path, count_decodes):
    before = decode_images(images, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    changed = images.paths[0]
    Image.new("RGB", (32, 32), (255, 0, 0)).save(changed)
    images_now = scan_folder(changed.parent.parent)
    after = decode_images(images_now, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    assert after.key != before.key
    assert len(count_decodes) == 2 * len(images)
    assert (after.images[0] == np.array([255, 0, 0], dtype=np.uint8)).all()
    assert not (before.images[0] == np.array([255, 0, 0], dtype=np.uint8)).all()


def test_added_file_and_other_size_invalidate_the_cache(images, tmp_path):
    key = cache_key(images, CONFIG)
    assert cache_key(images, DataConfig(input_size=48)) != key
    extra = images.paths[0].with_name("extra.png")
    shutil.copy(images.paths[0], extra)
    assert cache_key(scan_folder(extra.parent.parent), CONFIG) != key


def test_damaged_cache_is_rebuilt(images, tmp_path, count_decodes):
    first = decode_images(images, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    assert first.path is not None
    first.path.write_bytes(b"not an npy file")
    again = decode_images(images, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    assert len(count_decodes) == 2 * len(images)
    np.testing.assert_array_equal(again.images, first.images)


def test_cached_unreadable_file_is_an_error_unless_skipping(images, tmp_path):
    images.paths[1].write_bytes(b"broken")
    broken = scan_folder(images.paths[1].parent.parent)
    with pytest.warns(UserWarning, match="skipped 1"):
        skipped = decode_images(
            broken, CONFIG, cache_dir=tmp_path / "cache", on_bad_image="skip", progress=False
        )
    assert len(skipped) == len(broken) - 1
    with pytest.raises(DataError, match="on_bad_image"):
        decode_images(broken, CONFIG, cache_dir=tmp_path / "cache", on_bad_image="error", progress=False)
    hit = decode_images(broken, CONFIG, cache_dir=tmp_path / "cache", on_bad_image="skip", progress=False)
    assert hit.skipped == skipped.skipped and len(hit) == len(skipped)


def test_file_lock_excludes_and_times_out(tmp_path):
    lock = tmp_path / "x.lock"
    with file_lock(lock), pytest.raises(LockTimeout, match="x.lock"), file_lock(lock, timeout=0.1):
        pass
    with file_lock(lock, timeout=0.1):  # released again
        pass


def test_decoding_reports_its_progress_from_zero_to_all_and_a_hit_reports_nothing(
    images, tmp_path, monkeypatch
):
    monkeypatch.setattr(cache_module, "PROGRESS_EVERY", 0.0)  # a call per image
    calls: list[tuple[int, int]] = []
    decode_images(images, CONFIG, cache_dir=tmp_path / "cache", on_progress=lambda d, t: calls.append((d, t)))
    n = len(images)
    assert calls[0] == (0, n) and calls[-1] == (n, n)
    assert [d for d, _ in calls] == list(range(n + 1))
    calls.clear()
    decode_images(images, CONFIG, cache_dir=tmp_path / "cache", on_progress=lambda d, t: calls.append((d, t)))
    assert calls == []
