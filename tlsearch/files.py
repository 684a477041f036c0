"""The study's own files are written whole or not at all, and a write that fails says which file.

Every file tlsearch writes into a study folder (``study.json``, the image check's record, the
decoded-image and feature caches, a trial's checkpoint) goes through :func:`atomic_file`: a
temporary file beside the target, renamed over it once complete. A write that fails (a full disk,
most often) removes its temporary file, leaves the previous version of the target as it was, and
raises :class:`~tlsearch.errors.WriteError` naming the file, which the CLI prints as one line.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tlsearch.errors import WriteError


@contextlib.contextmanager
def atomic_file(path: Path, *, binary: bool = False) -> Iterator[IO[Any]]:
    """An open temporary file that becomes ``path`` when the block ends without an error.

    ::

        with atomic_file(folder / "record.json") as f:
            json.dump(record, f)
    """
    tmp: str | None = None
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            mode = "wb" if binary else "w"
            encoding = None if binary else "utf-8"
            with tempfile.NamedTemporaryFile(
                mode, dir=path.parent, suffix=f"{path.suffix}.tmp", delete=False, encoding=encoding
            ) as f:
                tmp = f.name
                yield f
            os.replace(tmp, path)
            tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn an ``OSError`` of the block into a :class:`~tlsearch.errors.WriteError` naming ``path``."""
    try:
        yield
    except OSError as exc:
        raise WriteError.from_os_error(path, exc) from exc
