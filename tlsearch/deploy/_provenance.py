"""Reading back what made an exported model: its backbone's concrete model, the plugins of its
trial with their packages (or files) and versions, and the library versions. Torch-free.

The export writes them (:mod:`tlsearch.export._provenance`) under the metadata keys
``backbone_model`` and ``provenance``; a model exported before they existed has neither, and
reads back as an empty :class:`Provenance`.

>>> Predictor("model.onnx").provenance.requirements()     # doctest: +SKIP
['tlsearch==0.1.0', 'my-tlsearch-plugins==1.2.0', 'torch==2.4.1', 'timm==1.0.9', ...]
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlsearch.deploy._format import ModelFormatError

PLUGIN_KINDS = ("backbone", "head", "freezing", "regularizer")
#: the libraries whose pins :meth:`Provenance.requirements` lists after the plugins' packages
REQUIRED_LIBRARIES = (
    "torch",
    "torchvision",
    "timm",
    "onnx",
    "onnxruntime",
    "optuna",
    "pluggy",
    "numpy",
    "pillow",
)


@dataclass(frozen=True)
class PluginSource:
    """One plugin of the trial that made the model, and where it came from.

    ``package`` and ``version`` for a plugin from an installed distribution (``tlsearch`` itself
    for the built-ins); ``file`` and ``sha256`` for a plugin file named by ``plugins:`` or
    ``--plugin`` (its content's hash when the model was exported)."""

    kind: str
    name: str
    class_path: str | None = None
    package: str | None = None
    version: str | None = None
    file: str | None = None
    sha256: str | None = None

    def requirement(self) -> str | None:
        """``package==version`` for pip, or None for a plugin file."""
        if self.package is None:
            return None
        return f"{self.package}=={self.version}" if self.version else self.package

    def file_matches(self, path: str | Path | None = None) -> bool | None:
        """Whether the plugin file at ``path`` (default: the recorded path) has the recorded content;
        None when this plugin is not from a file or the file cannot be read."""
        if self.sha256 is None or (path is None and self.file is None):
            return None
        try:
            data = Path(path if path is not None else self.file).read_bytes()  # type: ignore[arg-type]
        except OSError:
            return None
        return hashlib.sha256(data).hexdigest() == self.sha256

    def describe(self) -> str:
        origin = self.requirement() or f"file {self.file} (sha256 {str(self.sha256)[:12]}…)"
        return f"{self.kind} {self.name}: {origin}"


@dataclass(frozen=True)
class Provenance:
    """What made an exported model (the metadata's ``backbone_model`` and ``provenance``)."""

    backbone_model: str | None = None
    plugins: tuple[PluginSource, ...] = ()
    versions: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], *, source: str = "metadata") -> Provenance:
        """Parse (and check) the entries; a model exported before they existed gives an empty one.

        Raises :class:`ModelFormatError` naming ``source`` and the bad key when they are malformed."""
        model = metadata.get("backbone_model")
        if model is not None and not isinstance(model, str):
            raise ModelFormatError(f"{source}: backbone_model must be a string, got {model!r}")
        raw = metadata.get("provenance")
        if raw is None:
            return cls(backbone_model=model)
        if not isinstance(raw, Mapping):
            raise ModelFormatError(f"{source}: provenance must be an object, got {raw!r}")
        plugins = raw.get("plugins", [])
        if not isinstance(plugins, list):
            raise ModelFormatError(f"{source}: provenance.plugins must be a list, got {plugins!r}")
        versions = raw.get("versions", {})
        if not isinstance(versions, Mapping) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in versions.items()
        ):
            raise ModelFormatError(
                f"{source}: provenance.versions must map names to version strings, got {versions!r}"
            )
        return cls(
            backbone_model=model,
            plugins=tuple(_plugin(p, f"{source}: provenance.plugins[{i}]") for i, p in enumerate(plugins)),
            versions=dict(versions),
        )

    def of_kind(self, kind: str) -> list[PluginSource]:
        """The plugins of ``kind`` (one of :data:`PLUGIN_KINDS`; a trial has many regularizers)."""
        if kind not in PLUGIN_KINDS:
            raise ValueError(f"kind {kind!r} is not valid; valid: {', '.join(PLUGIN_KINDS)}")
        return [p for p in self.plugins if p.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone_model": self.backbone_model,
            "plugins": [
                {"kind": p.kind, "name": p.name, "class": p.class_path}
                | {k: getattr(p, k) for k in ("package", "version", "file", "sha256") if getattr(p, k)}
                for p in self.plugins
            ],
            "versions": dict(self.versions),
        }

    def requirements(self) -> list[str]:
        """Pip pins to reproduce the trial: tlsearch, each plugin package, then the libraries of
        :data:`REQUIRED_LIBRARIES` that were installed. Plugin files are not pip-installable: see
        :attr:`plugins` (their path and hash)."""
        pins = {"tlsearch": self.versions.get("tlsearch")} if self.versions.get("tlsearch") else {}
        for plugin in self.plugins:
            if plugin.package is not None:
                pins.setdefault(plugin.package, plugin.version)
        pins.update({lib: self.versions[lib] for lib in REQUIRED_LIBRARIES if self.versions.get(lib)})
        return [f"{name}=={version}" if version else name for name, version in pins.items()]


def _plugin(raw: Any, where: str) -> PluginSource:
    if not isinstance(raw, Mapping):
        raise ModelFormatError(f"{where} must be an object, got {raw!r}")
    kind, name = raw.get("kind"), raw.get("name")
    if kind not in PLUGIN_KINDS:
        raise ModelFormatError(f"{where}: kind {kind!r} is not valid; valid: {', '.join(PLUGIN_KINDS)}")
    if not isinstance(name, str) or not name:
        raise ModelFormatError(f"{where}: name must be a non-empty string, got {name!r}")
    values: dict[str, str | None] = {}
    for key in ("class", "package", "version", "file", "sha256"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise ModelFormatError(f"{where}: {key} must be a string or null, got {value!r}")
        values[key] = value
    return PluginSource(
        kind=kind,
        name=name,
        class_path=values["class"],
        package=values["package"],
        version=values["version"],
        file=values["file"],
        sha256=values["sha256"],
    )
