"""Adding entries to the metadata of a model already exported and verified (the held-out test
score, which is measured on the exported file itself, is only known after it is written)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from tlsearch.deploy._format import METADATA_KEY, metadata_props, validate_metadata
from tlsearch.errors import ExportError


def update_metadata(path: str | Path, extra: Mapping[str, Any]) -> tuple[str, int]:
    """Merge ``extra`` into the metadata of the exported model at ``path`` and of its ``model.json``
    (``path`` with suffix ``.json``), each replaced atomically; the graph and weights are untouched.
    Returns the new file's sha256 and size, which ``model.json`` records too."""
    path = Path(path)
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ExportError(f"{str(path)!r} has no {METADATA_KEY!r} metadata; it was not exported by tlsearch")
    meta = validate_metadata({**json.loads(props[METADATA_KEY]), **extra}, source="export metadata")
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata_props(meta))
    data = proto.SerializeToString()
    _replace(path, data)
    digest, size = hashlib.sha256(data).hexdigest(), len(data)
    json_file = path.with_suffix(".json")
    if json_file.is_file():
        record = json.loads(json_file.read_text())
        record.update(sha256=digest, size_bytes=size, metadata=meta)
        _replace(json_file, (json.dumps(record, indent=2, sort_keys=False) + "\n").encode())
    return digest, size


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
