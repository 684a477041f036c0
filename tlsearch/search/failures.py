"""The failure policy: a trial that fails is recorded (state FAIL, ``failure`` = the reason,
``failure_kind`` = one of :data:`FAILURE_KINDS`, ``failure_traceback`` = the last frames of the
traceback) and the study goes on — unless the failure is one every trial would meet (below).

Plugin classes are called directly by the trainer and the objective (``build``, ``setup``,
``penalty`` …), and a bare exception from them names no plugin. :func:`guard_plugins` wraps those
methods on the trial's plugin *instances*, so a failure reads
``regularizer plugin 'l2sp' (from acme-tl 1.2) failed in regularizer.penalty(): ValueError: …``;
:func:`instantiate_plugins` does the same for a plugin whose ``__init__`` raises. A plugin that
calls ``sys.exit`` fails its trial the same way instead of ending the process. A penalty must be
``None`` or a scalar tensor: anything else, and a non-finite penalty, names its regularizer.
Exceptions that mean something to the search pass through unwrapped: pruning, and out-of-memory
(CUDA's, or the host's: ``MemoryError``, handled by the objective: memory freed, the trial retried
once at half the batch).

**Study-wide failures** (:func:`study_wide`). Some failures do not depend on what a trial sampled,
so every later trial would fail the same way; the study stops at the first one, with its message,
and the command exits 1, instead of failing ten trials first:

* outside any plugin call: unreadable data (``failure_kind`` ``data``), a missing dependency
  (an ``ImportError`` anywhere in the chain), a config or plugin-loading error
  (:class:`~tlsearch.errors.ConfigError`, :class:`~tlsearch.errors.PluginError`) raised inside a
  trial (a missing dependency *inside* a plugin follows the next rule: other choices may work);
* a plugin failure while *building* the trial (the plugin's ``__init__``, ``backbone.build`` or
  ``describe``, ``head.build``, ``freezing.setup``, ``regularizer.setup``) when every value that
  call depends on is fixed in the study: the failing plugin is the only choice of its kind (a
  regularizer: always enabled) with no searched hyperparameter, and so are the plugins built before
  it (the backbone, for a head; backbone and head, for a ``setup``).

Failures during training (out of memory, non-finite loss, a penalty that raises) depend on the
sampled values and never stop the study this way; :class:`FailurePolicy` still stops a worker
after ``limit`` failures in a row.
"""

from __future__ import annotations

import functools
import gc
import traceback
from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tlsearch.config import PluginChoice, ResolvedSpace
from tlsearch.errors import (
    NO_SPACE,
    ConfigError,
    DataError,
    PluginCallError,
    PluginError,
    StorageUnavailable,
    TlsearchError,
    WriteError,
    storage_unavailable,
)
from tlsearch.kinds import Backbone, FreezingStrategy, Head, Regularizer
from tlsearch.registry import Registry
from tlsearch.search.sampling import TrialPlugins, instantiate
from tlsearch.search.signals import Terminated
from tlsearch.space import Categorical, Fixed, Hyperparameter
from tlsearch.train import NonFiniteError

PLUGIN_METHODS: dict[str, tuple[str, ...]] = {
    "backbone": ("build", "describe"),
    "head": ("build",),
    "freezing": ("setup", "on_epoch_start", "set_train_mode"),
    "regularizer": (
        "backbone_options",
        "optimizer_options",
        "loss_options",
        "setup",
        "transform_batch",
        "penalty",
        "teardown",
    ),
}
FAILURE_KINDS = (
    "oom",
    "non_finite",
    "plugin",
    "data",
    "interrupted",
    "worker_lost",
    "error",
    "skipped",
    "storage",
)
#: user attributes of a failed trial
TRACEBACK_ATTR = "failure_traceback"
SCOPE_ATTR = "failure_scope"  # "study" when every trial would fail the same way
TRACEBACK_FRAMES = 6
TRACEBACK_CHARS = 4000
_BUILD_METHODS = {
    "backbone": ("__init__", "build", "describe"),
    "head": ("__init__", "build"),
    "freezing": ("__init__", "setup"),
    "regularizer": ("__init__", "setup"),
}
_DEPENDS_ON = {"backbone": (), "head": ("backbone",), "freezing": ("backbone", "head")}
_KIND_CLASSES: tuple[tuple[str, type], ...] = (
    ("backbone", Backbone),
    ("head", Head),
    ("freezing", FreezingStrategy),
    ("regularizer", Regularizer),
)
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")
_PASS_THROUGH: tuple[type[BaseException], ...] = (
    optuna.TrialPruned,
    torch.cuda.OutOfMemoryError,
    MemoryError,
    PluginCallError,
    StorageUnavailable,  # the storage proxy went away: not the plugin's fault
)


class PluginFailure(PluginCallError):
    """A plugin raised (or exited) while tlsearch called it; says which plugin, from where, in what."""

    def __init__(self, *, kind: str, name: str, provider: str, method: str, error: BaseException) -> None:
        self.kind, self.name, self.provider, self.method = kind, name, provider, method
        super().__init__(
            f"{kind} plugin {name!r} (from {provider}) failed in {kind}.{method}(): {describe_error(error)}"
        )


def describe_error(error: BaseException) -> str:
    """``Type: message``; for ``sys.exit`` inside a plugin, what it did instead of ending tlsearch."""
    if isinstance(error, SystemExit):
        return f"it called sys.exit({error.code!r}), which tlsearch treats as a failure of the plugin"
    return f"{type(error).__name__}: {error}"


def _check_penalty(term: Any, fail: Callable[[str], PluginFailure]) -> Any:
    """A penalty is None or a scalar tensor; a bad one names its regularizer (checked without a
    device sync: shapes only; finiteness is checked by the trainer, see :func:`blame_non_finite`)."""
    if term is None:
        return None
    if not isinstance(term, torch.Tensor):
        raise fail(f"returned {type(term).__name__}, expected None or a scalar tensor")
    if term.numel() != 1:
        raise fail(f"returned a tensor of shape {tuple(term.shape)}, expected a scalar (one value)")
    return term


def _guarded(
    fn: Callable[..., Any], *, kind: str, name: str, provider: str, method: str, plugin: Any
) -> Callable[..., Any]:
    def failure(error: BaseException) -> PluginFailure:
        return PluginFailure(kind=kind, name=name, provider=provider, method=method, error=error)

    def bad_value(detail: str) -> PluginFailure:
        return failure(ValueError(detail))

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except (Exception, SystemExit) as exc:
            raise failure(exc) from exc
        if method == "penalty":
            result = _check_penalty(result, bad_value)
            if result is not None:  # a running "was any penalty non-finite" flag, on the device
                bad = ~torch.isfinite(result.detach()).all()
                previous = getattr(plugin, "_tlsearch_nonfinite", None)
                plugin._tlsearch_nonfinite = bad if previous is None else previous | bad
        return result

    # a trial on several devices pickles its plugins for the follower ranks: the guard travels as
    # "guard the class's method again" (tlsearch.train.distributed reads this attribute)
    call._tlsearch_pickle = (_reguard, (kind, name, provider, method, plugin))  # type: ignore[attr-defined]
    return call


def _reguard(kind: str, name: str, provider: str, method: str, plugin: Any) -> Callable[..., Any]:
    """A guarded plugin method rebuilt in another process (see :func:`_guarded`)."""
    bound = getattr(type(plugin), method).__get__(plugin)
    return _guarded(bound, kind=kind, name=name, provider=provider, method=method, plugin=plugin)


def guard_plugins(plugins: TrialPlugins, registry: Registry) -> TrialPlugins:
    """Wrap the plugin methods of this trial's instances so that a failure names the plugin, its
    provider (package and version, or plugin file) and the method. Returns ``plugins``."""
    for kind, plugin in _members(plugins):
        provider = str(registry.get(kind, plugin.name).provider)
        for method in PLUGIN_METHODS[kind]:
            bound = getattr(plugin, method, None)
            if callable(bound):
                setattr(
                    plugin,
                    method,
                    _guarded(
                        bound, kind=kind, name=plugin.name, provider=provider, method=method, plugin=plugin
                    ),
                )
    return plugins


def _members(plugins: TrialPlugins) -> list[tuple[str, Any]]:
    members = [("backbone", plugins.backbone), ("head", plugins.head), ("freezing", plugins.freezing)]
    return members + [("regularizer", reg) for reg in plugins.regularizers]


def instantiate_plugins(choices: dict[str, Any], registry: Registry) -> TrialPlugins:
    """:func:`~tlsearch.search.sampling.instantiate`, then :func:`guard_plugins`; a plugin whose
    ``__init__`` raises (or calls ``sys.exit``) fails as a :class:`PluginFailure` naming it."""
    try:
        plugins = instantiate(choices, registry)
    except (Exception, SystemExit) as exc:
        found = _constructing(exc)
        if found is None:
            raise
        kind, name = found
        try:
            provider = str(registry.get(kind, name).provider)
        except Exception:
            provider = "unknown provider"
        raise PluginFailure(kind=kind, name=name, provider=provider, method="__init__", error=exc) from exc
    return guard_plugins(plugins, registry)


def _constructing(exc: BaseException) -> tuple[str, str] | None:
    """(kind, name) of the plugin whose ``__init__`` is the outermost plugin frame of the traceback."""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "__init__":
            owner = frame.f_locals.get("self")
            for kind, cls in _KIND_CLASSES:
                if isinstance(owner, cls):
                    return kind, str(getattr(owner, "name", type(owner).__name__))
        tb = tb.tb_next
    return None


def blame_non_finite(exc: NonFiniteError, plugins: TrialPlugins | None) -> NonFiniteError:
    """The trainer's non-finite error, naming the regularizer whose penalty was non-finite, if one was."""
    if plugins is None:
        return exc
    for reg in plugins.regularizers:
        flag = getattr(reg, "_tlsearch_nonfinite", None)
        if flag is not None and bool(flag):
            return NonFiniteError(
                f"{exc}: regularizer {reg.name!r} returned a non-finite value from regularizer.penalty()"
            )
    return exc


def is_oom(exc: BaseException) -> bool:
    """Out of memory — the accelerator's (CUDA …) or the host's (``MemoryError``, PyTorch's CPU
    allocator) — also when wrapped by another exception."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (torch.cuda.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(seen, RuntimeError) and any(m in str(seen).lower() for m in _OOM_MESSAGES):
            return True
        seen = seen.__cause__
    return False


def classify(exc: BaseException) -> tuple[str, str]:
    """(``failure_kind``, reason) for an exception that ended a trial."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    lost = storage_unavailable(exc)
    if lost is not None:
        return "storage", f"storage unavailable: {lost}"
    if isinstance(exc, Terminated):
        return "interrupted", f"interrupted by {exc}; rerun the command to resume"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "interrupted (Ctrl-C); rerun the command to resume"
    if is_oom(exc):
        return "oom", f"out of memory: {type(exc).__name__}: {first_line}"
    if isinstance(exc, NonFiniteError):
        return "non_finite", f"non-finite result: {exc}"
    if isinstance(exc, PluginCallError):
        return "plugin", str(exc)
    if isinstance(exc, DataError):
        return "data", str(exc)
    if isinstance(exc, TlsearchError):
        return "error", str(exc)
    return "error", f"{type(exc).__name__}: {exc}"


def _innermost(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def short_traceback(exc: BaseException, *, frames: int = TRACEBACK_FRAMES) -> str:
    """The last ``frames`` frames of the innermost exception (the plugin's own, for a plugin
    failure), at most :data:`TRACEBACK_CHARS` characters: what a trial records next to its reason."""
    inner = _innermost(exc)
    lines = traceback.format_exception(type(inner), inner, inner.__traceback__, limit=-frames)
    text = "".join(lines)
    return text if len(text) <= TRACEBACK_CHARS else "…" + text[-TRACEBACK_CHARS:]


def _fixed(choices: tuple[PluginChoice, ...], name: str | None = None) -> bool:
    """The space has one choice here (``name``, when given), always enabled, with nothing searched."""
    if len(choices) != 1 or (name is not None and choices[0].name != name):
        return False
    (choice,) = choices
    return all(_single(hp) for hp in (choice.enabled, *choice.space.params.values()))


def _single(hp: Hyperparameter) -> bool:
    return isinstance(hp, Fixed) or (isinstance(hp, Categorical) and len(hp.choices) == 1)


def study_wide(exc: BaseException, space: ResolvedSpace) -> bool:
    """Whether every trial of this study would fail the same way (the rule in the module docstring)."""
    if not isinstance(exc, PluginFailure):  # not a plugin's doing: the data, the environment, the config
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, (DataError, ImportError, ConfigError, PluginError, WriteError)):
                return True
            if isinstance(seen, OSError) and seen.errno in NO_SPACE:  # a full disk fails the next trial too
                return True
            seen = seen.__cause__
        return False
    if exc.method not in _BUILD_METHODS.get(exc.kind, ()):
        return False
    if exc.kind == "regularizer":
        if not _fixed(tuple(c for c in space.regularizers if c.name == exc.name), exc.name):
            return False
        depends: tuple[str, ...] = () if exc.method == "__init__" else ("backbone", "head")
    else:
        if not _fixed(getattr(space, exc.kind), exc.name):
            return False
        depends = () if exc.method == "__init__" else _DEPENDS_ON[exc.kind]
    return all(_fixed(getattr(space, kind)) for kind in depends)


class FailurePolicy:
    """After each trial: stop this worker at the first study-wide failure (``failure_scope`` =
    ``study`` on the trial), or after ``limit`` failed trials in a row (a study whose every trial
    fails — no memory for any model — must not loop for ever). :attr:`stopped` says why it
    stopped, for the command's exit code; None while it has not."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.streak = 0
        self.stopped: str | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        attrs = trial.user_attrs
        if trial.state == TrialState.FAIL and not attrs.get("skipped"):
            self.streak += 1
        elif trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            self.streak = 0
        if trial.state == TrialState.FAIL and attrs.get(SCOPE_ATTR) == "study":
            self.stopped = (
                f"stopped the study at trial {trial.number}: every trial would fail the same way: "
                f"{attrs.get('failure', 'no reason recorded')}"
            )
            study.stop()
        elif self.limit is not None and self.streak >= self.limit:
            self.stopped = (
                f"stopped after {self.streak} failed trials in a row "
                f"(the last: {attrs.get('failure', 'no reason recorded')})"
            )
            study.stop()


def free_accelerator_memory() -> None:
    """Release cached accelerator memory. Call it *outside* the ``except`` block that caught an
    OOM: the exception's traceback keeps the failed step's tensors alive until it is dropped."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
