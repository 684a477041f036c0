"""The plugin manager: loading plugins, and the typed registries their ``register_*`` hooks fill.

Loading order (pluggy's eggsample shape): add the hookspecs, load the ``tlsearch`` entry-point
group (the built-ins in ``plugins/tlsearch_builtins`` come in this way too, exactly like a
third-party package), then plugin files a study or the command line names, then
``check_pending()`` so a misspelt hook name fails loudly.

Environment:

* ``TLSEARCH_DISABLE_PLUGIN_AUTOLOAD=1`` loads only tlsearch's own built-ins from the entry
  points (plugin files named explicitly still load).
* ``TLSEARCH_TRACE_HOOKS=1`` prints every hook call and its result to stderr.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from tlsearch import PROJECT_NAME, hookspecs
from tlsearch.errors import FailTrial, PluginError, format_choices
from tlsearch.kinds import KINDS, Plugin
from tlsearch.kinds._base import NAME_PATTERN, RESERVED_PARAMS, TASKS
from tlsearch.space import Categorical, Fixed, Float, Int, Required

ENTRY_POINT_GROUP = PROJECT_NAME
AUTOLOAD_ENV = "TLSEARCH_DISABLE_PLUGIN_AUTOLOAD"
TRACE_ENV = "TLSEARCH_TRACE_HOOKS"

log = logging.getLogger("tlsearch")

REGISTER_HOOKS = {
    "backbone": "tlsearch_register_backbones",
    "head": "tlsearch_register_heads",
    "freezing": "tlsearch_register_freezing_strategies",
    "regularizer": "tlsearch_register_regularizers",
}


@dataclass(frozen=True)
class Provider:
    """Where a plugin came from: its pluggy plugin name and, when installed, its distribution."""

    plugin: str
    package: str | None = None
    version: str | None = None

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


class _DuplicatePlugin(PluginError):
    """Two plugins register the same name: an error between two packages, not one broken plugin."""


class _BrokenPlugin(Exception):
    """Raised while building the registry when a third-party plugin's register hook fails."""

    def __init__(self, plugin: str, error: str, names: tuple[tuple[str, str], ...]) -> None:
        super().__init__(error)
        self.plugin, self.error, self.names = plugin, error, names


class Register:
    """What a ``tlsearch_register_*`` hook receives: ``register.add(cls)`` checks and records a plugin."""

    def __init__(self, registry: Registry, kind: str, provider: Provider) -> None:
        self._registry = registry
        self.kind = kind
        self._provider = provider

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
            raise _DuplicatePlugin(
                f"{kind} {cls.name!r} is provided twice: by {existing.provider} ({existing.cls.__module__}) "
                f"and by {provider} ({cls.__module__}); uninstall one, or set {AUTOLOAD_ENV}=1"
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


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with tlsearch's specs, and the registry built from the register hooks."""

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.failures: list[LoadFailure] = []
        self._distributions: dict[str, tuple[str, str]] = {}  # pluggy plugin name → (package, version)
        self._registry: Registry | None = None
        self._observer_errors: set[tuple[str, str]] = set()  # (plugin, hook) already warned about
        # Third-party entry points: skipped with a warning when broken. Built-ins and plugin files
        # the user named are strict: a broken one is an error.
        self._lenient: dict[str, str] = {}  # pluggy plugin name → where it came from
        if os.environ.get(TRACE_ENV):
            self.trace.root.setwriter(sys.stderr.write)
            self.enable_tracing()

    def register(self, plugin: object, name: str | None = None) -> str | None:
        self._registry = None
        return super().register(plugin, name)

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        self._registry = None
        return super().unregister(plugin, name)

    def _register_checked(self, module: ModuleType, name: str, *, where: str) -> None:
        """Register ``module``; a hook implementation whose arguments the hook does not have is a
        :class:`PluginError` naming the plugin, the hook and the valid argument names."""
        try:
            self.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            if self.get_plugin(name) is not None:
                self.unregister(name=name)  # pluggy leaves a half-registered plugin behind
            raise PluginError(f"{where}: {_describe_validation_error(module, exc)}") from None

    def _skip(self, name: str, source: str, error: str, names: tuple[tuple[str, str], ...] = ()) -> None:
        """Drop a broken third-party plugin: unregister it, record why, and warn (conda's rule)."""
        if self.get_plugin(name) is not None:
            self.unregister(name=name)
        self._lenient.pop(name, None)
        self._distributions.pop(name, None)
        self.failures.append(LoadFailure(source, error, plugin=name, names=names))
        warnings.warn(f"tlsearch: skipped broken plugin {source}: {error}", stacklevel=3)

    def load_entry_points(self, *, autoload: bool = True) -> None:
        """Import every ``tlsearch`` entry point; one that fails to import is skipped with a warning.

        With ``autoload=False`` only the entry points of tlsearch's own distribution load.
        """
        for dist, ep in _entry_points():
            dist_name = dist.metadata["Name"] if dist is not None else None
            if not autoload and dist_name != PROJECT_NAME:
                continue
            if self.get_plugin(ep.name) is not None or self.is_blocked(ep.name):
                continue
            source = (
                f"entry point {ep.name!r} ({ep.value}) of {dist_name} {dist.version if dist else ''}".rstrip()
            )
            builtin = dist_name == PROJECT_NAME
            try:
                module = ep.load()
            except (Exception, SystemExit) as exc:  # a broken plugin must not take the tool down
                error = _describe_exception(exc)
                if builtin:
                    raise PluginError(f"built-in plugin {source} is broken: {error}") from exc
                self._skip(ep.name, source, error)
                continue
            try:
                self._register_checked(module, ep.name, where=f"plugin {source}")
            except PluginError as exc:
                if builtin:
                    raise
                self._skip(ep.name, source, str(exc).split(": ", 1)[-1])
                continue
            if dist is not None:
                self._distributions[ep.name] = (dist_name or "?", dist.version)
            if not builtin:
                self._lenient[ep.name] = source

    def load_file(self, path: str | Path) -> ModuleType:
        """Import a plugin file the user named (``--plugin my_plugins.py`` or ``plugins:`` in a study)."""
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"plugin file {str(path)!r} does not exist")
        name = f"tlsearch_local_{path.stem}_{abs(hash(str(path))) & 0xFFFFFF:x}"
        loaded = self.get_plugin(name)
        if isinstance(loaded, ModuleType):
            return loaded
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise PluginError(f"plugin file {str(path)!r} is not a Python module")
        module = importlib.util.module_from_spec(spec)
        try:
            sys.modules[name] = module
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            sys.modules.pop(name, None)
            raise PluginError(
                f"plugin file {str(path)!r} failed to import: {_describe_exception(exc)}"
            ) from exc
        self._register_checked(module, name, where=f"plugin file {str(path)!r}")
        return module

    def provider_of(self, plugin: object) -> Provider:
        name = self.get_name(plugin) or repr(plugin)
        if name in self._distributions:
            return Provider(name, *self._distributions[name])
        if isinstance(plugin, ModuleType) and getattr(plugin, "__file__", None):
            return Provider(f"{name} ({plugin.__file__})")
        return Provider(name)

    @property
    def registry(self) -> Registry:
        """The plugins registered by every loaded plugin's ``register_*`` hooks (built on first use).

        A third-party plugin whose register hook raises (or registers an invalid class) is skipped
        with a warning, with everything it registered; a broken built-in or plugin file is an error.
        """
        while self._registry is None:
            try:
                self._registry = self._build_registry()
            except _BrokenPlugin as broken:
                self._skip(broken.plugin, self._lenient[broken.plugin], broken.error, broken.names)
        return self._registry

    def _build_registry(self) -> Registry:
        registry = Registry(failures=list(self.failures))
        for kind, hook_name in REGISTER_HOOKS.items():
            hook = getattr(self.hook, hook_name)
            # Call each implementation alone so that every class is recorded with its provider.
            for impl in reversed(hook.get_hookimpls()):
                provider = self.provider_of(impl.plugin)
                register = Register(registry, kind, provider)
                try:
                    impl.function(**{a: register for a in impl.argnames})
                except _DuplicatePlugin:
                    raise
                except (Exception, SystemExit) as exc:
                    name = self.get_name(impl.plugin)
                    if isinstance(exc, PluginError):
                        error = f"{hook_name}: {exc}"
                    else:
                        error = f"{hook_name} raised {_describe_exception(exc)}"
                    if name in self._lenient:
                        names = tuple(
                            (info.kind, info.name) for info in registry if info.provider.plugin == name
                        )
                        raise _BrokenPlugin(name, error, names) from None
                    if isinstance(exc, PluginError):
                        raise
                    raise PluginError(
                        f"{hook_name} of plugin {provider} raised {_describe_exception(exc)}"
                    ) from exc
        return registry

    def check_hooks(self) -> None:
        """pluggy's ``check_pending``: a hook implementation no spec knows (a misspelt hook name) is
        an error naming the plugin, the hook and the valid hook names; a third-party plugin with one
        is skipped with a warning instead."""
        while True:
            try:
                self.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                name = self.get_name(exc.plugin)
                error = _describe_validation_error(exc.plugin, exc)
                if name in self._lenient:
                    self._skip(name, self._lenient[name], error)
                    continue
                raise PluginError(f"plugin {self.provider_of(exc.plugin)}: {error}") from None

    def notify(self, hook_name: str, *, may_end_trial: bool = False, **kwargs: Any) -> None:
        """Call an observer hook (trial start, epoch end, trial end, study end, export done).

        Observers do not decide a trial's fate: an implementation that raises is logged, once per
        plugin and hook, naming both, and the others still run. With ``may_end_trial`` (the trial
        hooks while the trial can still end otherwise) two exceptions pass through on purpose:
        :class:`~tlsearch.errors.FailTrial` (re-raised with the plugin's name) and
        :class:`optuna.TrialPruned`.
        """
        import optuna

        hook = getattr(self.hook, hook_name)
        for impl in reversed(hook.get_hookimpls()):
            try:
                impl.function(**{a: kwargs[a] for a in impl.argnames if a in kwargs})
            except optuna.TrialPruned:
                if may_end_trial:
                    raise
                self._observer_failed(
                    impl.plugin, hook_name, "TrialPruned (only tlsearch_epoch_end can prune)"
                )
            except FailTrial as exc:
                if may_end_trial:
                    raise FailTrial(
                        f"plugin {self.provider_of(impl.plugin)} failed the trial in {hook_name}: {exc}"
                    ) from None
                self._observer_failed(
                    impl.plugin, hook_name, f"FailTrial: {exc} (too late to fail the trial)"
                )
            except Exception as exc:
                self._observer_failed(impl.plugin, hook_name, f"{type(exc).__name__}: {exc}")

    def _observer_failed(self, plugin: object, hook_name: str, error: str) -> None:
        """Log an observer hook's error: a warning the first time for this plugin and hook, then debug."""
        key = (self.get_name(plugin) or repr(plugin), hook_name)
        level = logging.DEBUG if key in self._observer_errors else logging.WARNING
        self._observer_errors.add(key)
        log.log(
            level,
            "plugin %s failed in %s (ignored: the trial keeps its result; further errors of this plugin "
            "in this hook are logged at debug level): %s",
            self.provider_of(plugin),
            hook_name,
            error,
        )


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the plugin called sys.exit"
    return f"{type(exc).__name__}: {exc}"


def _hook_functions(plugin: object) -> dict[str, Any]:
    return {
        n: getattr(plugin, n)
        for n in dir(plugin)
        if n.startswith(f"{PROJECT_NAME}_")
        and getattr(getattr(plugin, n), f"{PROJECT_NAME}_impl", None) is not None
    }


def _describe_validation_error(plugin: object, exc: pluggy.PluginValidationError) -> str:
    """pluggy's validation error in tlsearch's words: which hook, which argument, the valid ones."""
    valid_hooks = sorted(n for n in dir(hookspecs) if n.startswith(f"{PROJECT_NAME}_"))
    for hook_name, fn in _hook_functions(plugin).items():
        if hook_name not in valid_hooks:
            return f"implements unknown hook {hook_name!r}; valid hooks: {', '.join(valid_hooks)}"
        spec_args = list(inspect.signature(getattr(hookspecs, hook_name)).parameters)
        impl_args = list(inspect.signature(fn).parameters)
        bad = [a for a in impl_args if a not in spec_args]
        if bad:
            return (
                f"{hook_name}() takes argument(s) {', '.join(map(repr, bad))} that the hook does not "
                f"pass; valid argument names: {', '.join(spec_args)}"
            )
    return str(exc).replace("\n", " ")


def _entry_points() -> Iterable[tuple[md.Distribution | None, md.EntryPoint]]:
    seen: set[tuple[str, str]] = set()
    for dist in md.distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP and (ep.name, ep.value) not in seen:
                seen.add((ep.name, ep.value))
                yield dist, ep


def get_plugin_manager(
    plugin_files: Sequence[str | Path] = (), *, autoload: bool | None = None
) -> PluginManager:
    """A plugin manager with the entry-point plugins and ``plugin_files`` loaded and checked.

    ``autoload`` defaults to the environment (``TLSEARCH_DISABLE_PLUGIN_AUTOLOAD``).
    """
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "").lower() not in {"1", "true", "yes"}
    pm = PluginManager()
    pm.load_entry_points(autoload=autoload)
    for path in plugin_files:
        pm.load_file(path)
    pm.check_hooks()
    pm.registry  # noqa: B018 - register now, so duplicates and bad classes fail before any work
    return pm
