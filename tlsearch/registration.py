"""The typed registry that the ``tlsearch_register_*`` hooks fill, and the records it keeps.

:class:`Register` is what a register hook receives; :class:`Registry` holds every registered class
with the :class:`Provider` it came from (for duplicate-name errors naming both providers,
``tlsearch plugins list`` and the provenance an exported model carries). This module imports no
hook machinery, so :mod:`tlsearch.hookspecs` can name :class:`Register` without an import cycle.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tlsearch import PROJECT_NAME
from tlsearch.errors import PluginError, format_choices
from tlsearch.kinds import KINDS, Plugin
from tlsearch.kinds._base import RESERVED_PARAMS, TASKS
from tlsearch.kinds._names import NAME_PATTERN
from tlsearch.space import Categorical, Fixed, Float, Int, Required

BLOCK_ENV = "TLSEARCH_BLOCK_PLUGINS"


@dataclass(frozen=True)
class Provider:
    """Where a plugin came from: its pluggy plugin name and, when installed, its distribution."""

    plugin: str
    package: str | None = None
    version: str | None = None
    path: str | None = None  # the plugin file, for a plugin loaded from one

    def __str__(self) -> str:
        if self.package:
            return f"{self.package} {self.version}"
        return self.plugin


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin class and its provider."""

    kind: str
    name: str
    cls: type[Plugin]
    provider: Provider

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "provider": self.provider.package or self.provider.plugin,
            "version": self.provider.version,
            "summary": self.cls.summary(),
            "hyperparameters": {k: hp.describe() for k, hp in self.cls.hyperparameters.items()},
        }


@dataclass(frozen=True)
class LoadFailure:
    """A third-party plugin that is broken (fails to import, exits, raises in a register hook, or
    implements a hook wrongly): skipped with a warning, shown by ``tlsearch plugins list``, and
    an error naming it and the reason if a study asks for one of its plugins.

    ``names`` holds the ``(kind, name)`` pairs it registered before it broke (often none)."""

    source: str
    error: str
    plugin: str | None = None
    names: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.plugin,  # the entry point's name; which kinds it provides is unknown
            "kind": None,
            "plugin": self.plugin,
            "source": self.source,
            "status": "broken",
            "reason": self.error,
            "names": [f"{kind}:{name}" for kind, name in self.names],
        }


class DuplicatePlugin(PluginError):
    """Two plugins register the same name: an error between two packages, not one broken plugin."""


class Register:
    """What a ``tlsearch_register_*`` hook receives: ``register.add(cls)`` checks and records a plugin."""

    def __init__(self, registry: Registry, kind: str, provider: Provider) -> None:
        self._registry = registry
        self.kind = kind
        self._provider = provider

    def __repr__(self) -> str:  # what TLSEARCH_TRACE_HOOKS shows: which kind, for which plugin
        return f"Register(kind={self.kind!r}, provider={str(self._provider)!r})"

    def add(self, cls: type[Plugin]) -> type[Plugin]:
        """Register ``cls``; returns it, so it also works as a class decorator."""
        self._registry._add(self.kind, cls, self._provider)
        return cls


def _check_plugin_class(kind: str, cls: Any, provider: Provider) -> None:
    base = KINDS[kind]
    where = f"{kind} plugin {getattr(cls, '__name__', cls)!r} from {provider}"
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise PluginError(f"{where}: expected a subclass of tlsearch.kinds.{base.__name__}, got {cls!r}")
    if inspect.isabstract(cls):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        raise PluginError(f"{where}: does not implement {', '.join(missing)}")
    if not isinstance(cls.name, str) or not NAME_PATTERN.match(cls.name):
        raise PluginError(f"{where}: name {cls.name!r} must match {NAME_PATTERN.pattern}")
    if not isinstance(cls.hyperparameters, Mapping):
        raise PluginError(f"{where}: hyperparameters must be a mapping of name → Float/Int/Categorical/Fixed")
    for pname, hp in cls.hyperparameters.items():
        if not isinstance(hp, (Float, Int, Categorical, Fixed, Required)):
            raise PluginError(
                f"{where}: hyperparameter {pname!r} must be Float/Int/Categorical/Fixed/Required, got {hp!r}"
            )
        if pname in RESERVED_PARAMS or not NAME_PATTERN.match(pname):
            raise PluginError(f"{where}: hyperparameter name {pname!r} is reserved or invalid")
        problem = hp.default_problem()
        if problem:
            raise PluginError(f"{where}: hyperparameter {pname!r}: {problem}")
    if not cls.tasks or not set(cls.tasks) <= set(TASKS):
        raise PluginError(f"{where}: tasks {cls.tasks!r} must be a non-empty tuple of {', '.join(TASKS)}")


@dataclass
class Registry:
    """All registered plugins by kind, and the plugins that failed to load."""

    plugins: dict[str, dict[str, PluginInfo]] = field(default_factory=lambda: {k: {} for k in KINDS})
    failures: list[LoadFailure] = field(default_factory=list)

    def _add(self, kind: str, cls: type[Plugin], provider: Provider) -> None:
        _check_plugin_class(kind, cls, provider)
        existing = self.plugins[kind].get(cls.name)
        if existing is not None and existing.cls is not cls:
            raise DuplicatePlugin(
                f"{kind} {cls.name!r} is provided twice: by {existing.provider} ({existing.cls.__module__}) "
                f"and by {provider} ({cls.__module__}); to resolve it, {_clash_advice(existing.provider, provider)}"
            )
        self.plugins[kind][cls.name] = PluginInfo(kind, cls.name, cls, provider)

    def names(self, kind: str) -> list[str]:
        return sorted(self.plugins[kind])

    def get(self, kind: str, name: str, *, where: str = "") -> PluginInfo:
        """The plugin ``name`` of ``kind``, or a :class:`PluginError` listing the valid choices
        (and, when some plugin failed to import, why)."""
        try:
            return self.plugins[kind][name]
        except KeyError:
            pass
        prefix = f"{where}: " if where else ""
        for failure in self.failures:
            if (kind, name) in failure.names:
                raise PluginError(
                    f"{prefix}{kind} {name!r} comes from a broken plugin, skipped: {failure.source}: "
                    f"{failure.error} (fix or uninstall it; see `tlsearch plugins list`)"
                )
        message = (
            f"{prefix}unknown {kind} {name!r}; available: {format_choices(self.plugins[kind])} "
            "(see `tlsearch plugins list`)"
        )
        related = [f for f in self.failures if name in f.source] or self.failures
        if related:
            message += "; plugins that failed to load: " + "; ".join(
                f"{f.source}: {f.error}" for f in related
            )
        raise PluginError(message)

    def __iter__(self) -> Iterator[PluginInfo]:
        for kind in KINDS:
            yield from (self.plugins[kind][n] for n in sorted(self.plugins[kind]))


def _clash_advice(*providers: Provider) -> str:
    """Steps that resolve a name clash, for each provider tlsearch can leave out (never a built-in)."""
    steps = []
    for provider in providers:
        if provider.path:
            steps.append(
                f"drop the plugin file {provider.path} (--plugin / plugins:) or change its class's name"
            )
        elif provider.package and provider.package != PROJECT_NAME:
            steps.append(
                f"uninstall {provider.package}, or set {BLOCK_ENV}={provider.plugin} to leave it out"
            )
    return " or ".join(steps) or "change the name of one of the two classes"
