"""Adding entries to an exported model's metadata (:func:`tlsearch.export._metadata.update_metadata`,
how the held-out test score reaches the file that ships), on a one-node ONNX file built by hand."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from tlsearch.deploy import ModelFormatError
from tlsearch.deploy._format import METADATA_KEY, metadata_props
from tlsearch.errors import ExportError
from tlsearch.export._metadata import update_metadata
from tlsearch.preprocessing import DataConfig

META: dict[str, Any] = {
    "task": "classification",
    "labels": ["a", "b"],
    "data_config": DataConfig(32).to_dict(),
}


def write_model(folder: Path, metadata: dict[str, Any] | None = META, *, with_json: bool = True) -> Path:
    """An Identity model at ``folder/model.onnx`` with ``metadata`` (None: no tlsearch entry) and,
    with ``with_json``, a ``model.json`` beside it as export_onnx writes one."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    proto = helper.make_model(graph)
    helper.set_model_props(proto, {"author": "someone"} if metadata is None else metadata_props(metadata))
    path = folder / "model.onnx"
    onnx.save(proto, str(path))
    if with_json:
        record = {"path": str(path), "sha256": "old", "size_bytes": 1, "metadata": metadata, "kept": 7}
        path.with_suffix(".json").write_text(json.dumps(record))
    return path


def props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_the_entries_are_merged_into_the_onnx_metadata_and_model_json(tmp_path: Path) -> None:
    """Bugs caught: the old entries dropped or the new ones not written, the flat keys not rewritten,
    a digest or size that is not the new file's, model.json not updated or its other keys lost."""
    path = write_model(tmp_path)
    graph_before = onnx.load(str(path)).graph
    score = {"accuracy": 0.75, "images": 4}
    digest, size = update_metadata(path, {"test": score})

    data = path.read_bytes()
    assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))
    merged = {**META, "test": score}
    assert json.loads(props(path)[METADATA_KEY]) == merged
    expected = {k: json.loads(v) for k, v in metadata_props(merged).items()}
    assert {k: json.loads(v) for k, v in props(path).items()} == expected  # the flat keys too, no other
    assert onnx.load(str(path)).graph == graph_before  # the graph and weights are untouched
    text = path.with_suffix(".json").read_text()
    record = json.loads(text)
    assert record == {"path": str(path), "sha256": digest, "size_bytes": size, "metadata": merged, "kept": 7}
    assert list(record) == ["path", "sha256", "size_bytes", "metadata", "kept"]  # its order is kept
    assert text == json.dumps(record, indent=2) + "\n"  # and its readable layout
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.onnx"]  # no temporary file left


def test_an_entry_replaces_the_one_of_the_same_name(tmp_path: Path) -> None:
    """Bug caught: the old value wins over the new one (the merge in the wrong order)."""
    path = write_model(tmp_path, {**META, "test": {"accuracy": 0.1}})
    update_metadata(str(path), {"test": {"accuracy": 0.9}})  # a str path too
    assert json.loads(props(path)[METADATA_KEY])["test"] == {"accuracy": 0.9}


def test_without_model_json_only_the_onnx_file_changes(tmp_path: Path) -> None:
    """Bug caught: a model.json created where the export wrote none."""
    path = write_model(tmp_path, with_json=False)
    update_metadata(path, {"test": {"accuracy": 0.5}})
    assert json.loads(props(path)[METADATA_KEY])["test"] == {"accuracy": 0.5}
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_a_file_not_exported_by_tlsearch_is_refused_unchanged(tmp_path: Path) -> None:
    """Bug caught: a foreign model given tlsearch metadata (or a KeyError instead of the reason)."""
    path = write_model(tmp_path, None)
    before = path.read_bytes()
    with pytest.raises(ExportError, match=f"has no '{METADATA_KEY}' metadata"):
        update_metadata(path, {"test": {"accuracy": 0.5}})
    assert path.read_bytes() == before


def test_entries_that_make_the_metadata_invalid_are_refused_before_writing(tmp_path: Path) -> None:
    """Bug caught: the merged metadata written without the checks deploy relies on."""
    path = write_model(tmp_path)
    before, json_before = path.read_bytes(), path.with_suffix(".json").read_text()
    with pytest.raises(ModelFormatError, match="task 'nonsense' is not valid"):
        update_metadata(path, {"task": "nonsense"})
    assert path.read_bytes() == before and path.with_suffix(".json").read_text() == json_before


def test_a_failed_write_leaves_the_model_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bugs caught: the model written in place (half a file on a crash), or the temporary file left
    behind when the replace fails."""
    path = write_model(tmp_path)
    before = path.read_bytes()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        update_metadata(path, {"test": {"accuracy": 0.5}})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.onnx"]
