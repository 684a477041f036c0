"""What made an exported model: the plugins of its trial, where each came from, and the versions.

A deployer who wants to reproduce (or audit) a model needs more than the trial's choices
(``backbone: timm``): which package provided each plugin and at which version, which local file
and its exact content for a ``--plugin file.py`` plugin, and the versions of tlsearch and the
libraries that trained and exported it. :func:`provenance` collects that for the export's metadata
(``provenance``, read back torch-free by :class:`tlsearch.deploy.Provenance`).

Versions come from the installed distributions' metadata (:mod:`importlib.metadata`), so nothing is
imported to learn them. They describe the environment that exported the model; a study's trials
run in the same install unless workers on other machines joined it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import inspect
import platform
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tlsearch.deploy._provenance import REQUIRED_LIBRARIES

if TYPE_CHECKING:
    from tlsearch.registry import PluginInfo, PluginManager

#: the distributions whose versions every export records (absent ones are recorded as None): tlsearch
#: and the libraries a deployer's :meth:`~tlsearch.deploy.Provenance.requirements` pins, one list
RECORDED_DISTRIBUTIONS = ("tlsearch", *REQUIRED_LIBRARIES)


def used_plugins(choices: dict[str, Any]) -> list[tuple[str, str]]:
    """``(kind, name)`` of every plugin a trial's ``choices`` use: backbone, head, freezing, then
    each regularizer that is on, in the order the trial recorded them."""
    used: list[tuple[str, str]] = [
        (kind, str(choices[kind])) for kind in ("backbone", "head", "freezing") if kind in choices
    ]
    used += [
        ("regularizer", key.split(".", 1)[1])
        for key, value in choices.items()
        if key.startswith("regularizer.") and key.count(".") == 1 and value
    ]
    return used


def versions() -> dict[str, str | None]:
    """Python's version and that of each of :data:`RECORDED_DISTRIBUTIONS` (None when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in RECORDED_DISTRIBUTIONS:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def plugin_source(pm: PluginManager, info: PluginInfo) -> dict[str, Any]:
    """Where one registered plugin came from.

    ``{"kind", "name", "class"}`` and either ``package`` + ``version`` (an installed distribution:
    a third-party package, or ``tlsearch`` itself for the built-ins) or ``file`` + ``sha256`` (a
    plugin file named by ``plugins:`` or ``--plugin``: its absolute path and the sha256 of its
    content now, which says whether the file a deployer has is the one that was used).
    """
    entry: dict[str, Any] = {
        "kind": info.kind,
        "name": info.name,
        "class": f"{info.cls.__module__}.{info.cls.__qualname__}",
    }
    if info.provider.package:
        entry.update(package=info.provider.package, version=info.provider.version)
        return entry
    file = _source_file(pm, info)
    entry.update(file=str(file) if file else None, sha256=_sha256(file) if file else None)
    return entry


def provenance(pm: PluginManager, choices: dict[str, Any]) -> dict[str, Any]:
    """``{"plugins": [...], "versions": {...}}`` of a trial: :func:`plugin_source` for each of
    :func:`used_plugins` (looked up in ``pm``'s registry), and :func:`versions`."""
    registry = pm.registry
    plugins = [plugin_source(pm, registry.get(kind, name)) for kind, name in used_plugins(choices)]
    return {"plugins": plugins, "versions": versions()}


def _source_file(pm: PluginManager, info: PluginInfo) -> Path | None:
    """The file of the pluggy plugin (module) that registered ``info``, else of its class."""
    for _, plugin in pm.list_name_plugin():
        if isinstance(plugin, ModuleType) and pm.provider_of(plugin) == info.provider:
            file = getattr(plugin, "__file__", None)
            if file:
                return Path(file).resolve()
    module = sys.modules.get(info.cls.__module__)
    try:
        file = inspect.getsourcefile(module or info.cls)
    except TypeError:  # a class made at run time, with no file
        return None
    return Path(file).resolve() if file else None


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
