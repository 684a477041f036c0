"""The plugin manager: loading plugins, and the typed registries their ``register_*`` hooks fill.

Loading order (pluggy's eggsample shape): add the hookspecs, load the ``tlsearch`` entry-point
group (the built-ins in ``plugins/tlsearch_builtins`` come in this way too, exactly like a
third-party package), then plugin files a study or the command line names, then
``check_pending()`` so a misspelt hook name fails loudly.

Environment:

* ``TLSEARCH_DISABLE_PLUGIN_AUTOLOAD=1`` loads only tlsearch's own built-ins from the entry
  points (plugin files named explicitly still load).
* ``TLSEARCH_BLOCK_PLUGINS=name,…`` leaves out the entry points of those names (pluggy's
  ``set_blocked``), e.g. one whose class clashes with a built-in's name.
* ``TLSEARCH_TRACE_HOOKS=1`` prints every hook call and its result to stderr.

Every hook is called through pluggy's relay, so tracing, ``wrapper=True`` (and old-style
``hookwrapper=True``) implementations, ``tryfirst``/``trylast`` and ``unregister`` work as pluggy
documents. tlsearch calls a hook once per (non-wrapper) implementation, through
``subset_hook_caller``, with every wrapper around it: that is how a registered class is recorded
with the plugin that provided it, and how an observer that raises is named while the others
still run.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import pluggy

from tlsearch import PROJECT_NAME, hookspecs
from tlsearch.errors import FailTrial, PluginError
from tlsearch.registration import (
    BLOCK_ENV,
    DuplicatePlugin,
    LoadFailure,
    PluginInfo,
    Provider,
    Register,
    Registry,
)

__all__ = [
    "AUTOLOAD_ENV",
    "BLOCK_ENV",
    "TRACE_ENV",
    "LoadFailure",
    "PluginInfo",
    "PluginManager",
    "Provider",
    "Register",
    "Registry",
    "get_plugin_manager",
]

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


class _BrokenPlugin(Exception):
    """Raised while building the registry when a third-party plugin's register hook fails."""

    def __init__(self, plugin: str, error: str, names: tuple[tuple[str, str], ...]) -> None:
        super().__init__(error)
        self.plugin, self.error, self.names = plugin, error, names


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
        for hook_like in _unmarked_hooks(module):
            warnings.warn(
                f"tlsearch: {where}: {hook_like} looks like a hook implementation but has no "
                "@tlsearch.hookimpl, so it is never called; decorate it (or rename it)",
                stacklevel=3,
            )

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
            return Provider(f"{name} ({plugin.__file__})", path=plugin.__file__)
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
            # One call per implementation, so that every class is recorded with its provider.
            for impl, call in self._each_implementation(hook_name):
                provider = self.provider_of(impl.plugin)
                try:
                    call(register=Register(registry, kind, provider))
                except DuplicatePlugin:
                    raise
                except (Exception, SystemExit) as exc:
                    culprit = _culprit(exc, getattr(self.hook, hook_name), impl)
                    name = self.get_name(culprit)
                    provider = self.provider_of(culprit)
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

    def _each_implementation(self, hook_name: str) -> Iterator[tuple[pluggy.HookImpl, Callable[..., Any]]]:
        """Each non-wrapper implementation of ``hook_name`` in pluggy's call order (``tryfirst``
        first, ``trylast`` last), with a caller through pluggy's relay that runs that one
        implementation inside every wrapper (so tracing and wrappers apply to each call)."""
        hook = getattr(self.hook, hook_name)
        impls = hook.get_hookimpls()
        plain = [impl for impl in impls if not (impl.wrapper or impl.hookwrapper)]
        if impls and not plain:  # wrappers only: they still run, around nothing, as in pluggy
            yield impls[-1], hook
        for impl in reversed(plain):
            others = [other.plugin for other in plain if other is not impl]
            yield impl, self.subset_hook_caller(hook_name, remove_plugins=others)

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
        spec_args = set(hook.spec.argnames if hook.spec else ())
        if set(kwargs) != spec_args:  # tlsearch's own mistake: not to be logged as the plugins'
            raise TypeError(f"{hook_name} takes {sorted(spec_args)}, called with {sorted(kwargs)}")
        for impl, call in self._each_implementation(hook_name):
            try:
                call(**kwargs)
            except optuna.TrialPruned as exc:
                if may_end_trial:
                    raise
                self._observer_failed(
                    _culprit(exc, hook, impl), hook_name, "TrialPruned (only tlsearch_epoch_end can prune)"
                )
            except FailTrial as exc:
                culprit = _culprit(exc, hook, impl)
                if may_end_trial:
                    raise FailTrial(
                        f"plugin {self.provider_of(culprit)} failed the trial in {hook_name}: {exc}"
                    ) from None
                self._observer_failed(culprit, hook_name, f"FailTrial: {exc} (too late to fail the trial)")
            except Exception as exc:
                self._observer_failed(_culprit(exc, hook, impl), hook_name, f"{type(exc).__name__}: {exc}")

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


def _culprit(exc: BaseException, hook: pluggy.HookCaller, impl: pluggy.HookImpl) -> object:
    """The plugin whose implementation (or wrapper) of ``hook`` raised ``exc``: the innermost
    traceback frame that runs one of the hook's functions; ``impl``'s plugin if none does."""
    plugins = {
        code: other.plugin
        for other in hook.get_hookimpls()
        if (code := getattr(other.function, "__code__", None)) is not None
    }
    culprit = impl.plugin
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        culprit = plugins.get(tb.tb_frame.f_code, culprit)
        tb = tb.tb_next
    return culprit


def _unmarked_hooks(plugin: object) -> list[str]:
    """Hook-like functions (``tlsearch_…``) of ``plugin``, or of a class its module defines, that
    lack ``@hookimpl``: pluggy ignores them without a word."""
    owners: list[tuple[object, str]] = [(plugin, "")]
    if isinstance(plugin, ModuleType):
        owners += [
            (obj, f"{obj.__name__}.")
            for obj in vars(plugin).values()
            if inspect.isclass(obj) and obj.__module__ == plugin.__name__
        ]
    found = []
    for owner, prefix in owners:
        for attr in dir(owner):
            value = getattr(owner, attr, None) if attr.startswith(f"{PROJECT_NAME}_") else None
            if callable(value) and getattr(value, f"{PROJECT_NAME}_impl", None) is None:
                found.append(prefix + attr)
    return found


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

    ``autoload`` defaults to the environment (``TLSEARCH_DISABLE_PLUGIN_AUTOLOAD``); the entry
    points ``TLSEARCH_BLOCK_PLUGINS`` names (comma-separated) are left out.
    """
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "").lower() not in {"1", "true", "yes"}
    pm = PluginManager()
    for blocked in filter(None, (n.strip() for n in os.environ.get(BLOCK_ENV, "").split(","))):
        pm.set_blocked(blocked)
    pm.load_entry_points(autoload=autoload)
    for path in plugin_files:
        pm.load_file(path)
    pm.check_hooks()
    pm.registry  # noqa: B018 - register now, so duplicates and bad classes fail before any work
    return pm
