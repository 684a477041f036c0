"""A real small disk to fill, and waiting on a marker, for fault tests (``tests/`` and
``benchmarks/faults/`` use the same ones).

::

    from tlsearch.testing.disk import NoSmallDisk, fill, small_disk

    try:
        with small_disk(tmp_path / "disk", size="1m") as disk:
            filler = fill(disk)  # the file system is now full to its last byte
            ...
    except NoSmallDisk as exc:
        pytest.skip(str(exc))
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path


class NoSmallDisk(Exception):
    """A tmpfs cannot be mounted here (mounting needs root); the caller skips its check."""


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount -o size=…``) mounted on ``folder`` for the ``with`` block,
    unmounted after it; :class:`NoSmallDisk` where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise NoSmallDisk(
            f"cannot mount a tmpfs to fill (needs root): {done.stderr.strip() or done.returncode}"
        )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system under ``folder`` to its last byte; delete the returned file to free it."""
    filler = folder / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb", buffering=0) as f:
        for block in (1 << 20, 1 << 16, 1 << 12, 1 << 8, 1):
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler


def wait_for(condition: Callable[[], bool], *, timeout: float, poll: float = 0.1) -> bool:
    """Poll ``condition`` until it holds (``True``) or ``timeout`` seconds pass (``False``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False
