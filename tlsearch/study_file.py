"""Reading a study file: UTF-8 text, plain YAML within bounds, every key once.

``yaml.safe_load`` runs no code, but it still lets a few hundred bytes exhaust the tool: nested
aliases expand to billions of values (a "billion laughs" file), ten thousand nested ``[`` overflow
Python's stack, and a repeated key silently replaces the first. A study file is a few dozen lines
written by a person, so :func:`read_study_yaml` keeps ``safe_load``'s meaning and refuses, each
time with the file and line:

* a file that is not UTF-8 (the message gives the byte offset), or larger than :data:`MAX_BYTES`;
* YAML aliases (``*name``): a study file has no use for them, and refusing them outright is
  simpler and safer than bounding their expansion (an anchor ``&name`` alone is harmless);
* nesting deeper than :data:`MAX_DEPTH`, or more than :data:`MAX_NODES` values in all;
* a key given twice in one mapping (both lines are named).

The bounds are checked on the parser's event stream, which is flat, before any document is built,
so a refused file costs one linear scan of at most :data:`MAX_BYTES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tlsearch.errors import ConfigError, short_repr

#: the largest study file read (a real one is a few KB)
MAX_BYTES = 1024 * 1024
#: the deepest nesting of mappings and lists (a real study nests about 5 deep)
MAX_DEPTH = 32
#: the most values (scalars, lists, mappings) in one study file
MAX_NODES = 20_000

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when installed: 10x faster


def read_study_yaml(path: Path, *, source: str | None = None) -> Any:
    """The parsed YAML of the study file at ``path``; a :class:`ConfigError` naming ``source``
    (default: the path) and the line for anything :mod:`this module <tlsearch.study_file>` refuses."""
    source = source or str(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the study file: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(
            f"{source}: the study file is larger than {MAX_BYTES // 1024} KiB; a study file describes a "
            "search in a few dozen lines"
        )
    text = decode_utf8(data, source=source)
    return parse_study_yaml(text, source=source)


def decode_utf8(data: bytes, *, source: str) -> str:
    """``data`` as text (a leading UTF-8 byte-order mark is dropped); otherwise a message with the
    offset and line of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{source} line {line}: the study file must be UTF-8 text, but byte {exc.start} "
            f"(0x{data[exc.start]:02x}) is not valid UTF-8; save the file as UTF-8"
        ) from None


def parse_study_yaml(text: str, *, source: str = "<study>") -> Any:
    """Parse ``text`` as :func:`read_study_yaml` does (for studies that do not come from a file)."""
    try:
        _check_events(text, source=source)
        loader = _StrictLoader(text, source=source)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


def _check_events(text: str, *, source: str) -> None:
    """Refuse aliases, deep nesting and too many values, reading the parser's flat event stream."""
    depth = 0
    nodes = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(
                f"{source} line {_line(event)}: YAML aliases are not allowed in study files "
                f"(*{short_repr(event.anchor, 40)[1:-1]}); write the value out where it is used"
            )
        if isinstance(event, yaml.NodeEvent):
            nodes += 1
            if nodes > MAX_NODES:
                raise ConfigError(
                    f"{source} line {_line(event)}: the study file holds more than {MAX_NODES:,} values"
                )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(
                    f"{source} line {_line(event)}: lists and mappings are nested more than {MAX_DEPTH} deep"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _line(event: yaml.Event | yaml.Node) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 0


class _StrictLoader(_Loader):
    """``safe_load``'s loader, refusing a key given twice in one mapping."""

    def __init__(self, stream: str, *, source: str) -> None:
        super().__init__(stream)
        self.source = source

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: safe_load's own message says so
            if first is not key_node:
                raise ConfigError(
                    f"{self.source} line {_line(key_node)}: key {short_repr(key, 80)} is given twice "
                    f"(first on line {_line(first)}); give each key once"
                )
        return super().construct_mapping(node, deep=deep)
