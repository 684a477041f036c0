"""The failure policy: a trial that fails is recorded (state FAIL, ``failure`` = the reason,
``failure_kind`` = one of :data:`FAILURE_KINDS`) and the study goes on.

Plugin classes are called directly by the trainer and the objective (``build``, ``setup``,
``penalty`` …), and a bare exception from them names no plugin. :func:`guard_plugins` wraps those
methods on the trial's plugin *instances*, so a failure reads
``regularizer plugin 'l2sp' (from acme-tl 1.2) failed in regularizer.penalty(): ValueError: …``.
Exceptions that mean something to the search pass through unwrapped: pruning, and CUDA
out-of-memory (handled by the objective: memory freed, the trial retried once at half the batch).
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any

import optuna
import torch

from tlsearch.errors import DataError, PluginCallError, TlsearchError
from tlsearch.registry import Registry
from tlsearch.search.sampling import TrialPlugins
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
FAILURE_KINDS = ("oom", "non_finite", "plugin", "data", "interrupted", "worker_lost", "error", "skipped")
_PASS_THROUGH: tuple[type[BaseException], ...] = (
    optuna.TrialPruned,
    torch.cuda.OutOfMemoryError,
    PluginCallError,
)


def _guarded(
    fn: Callable[..., Any], *, kind: str, name: str, provider: str, method: str
) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            raise PluginCallError(
                f"{kind} plugin {name!r} (from {provider}) failed in {kind}.{method}(): {type(exc).__name__}: {exc}"
            ) from exc

    return call


def guard_plugins(plugins: TrialPlugins, registry: Registry) -> TrialPlugins:
    """Wrap the plugin methods of this trial's instances so that a failure names the plugin, its
    provider (package and version, or plugin file) and the method. Returns ``plugins``."""
    members = [("backbone", plugins.backbone), ("head", plugins.head), ("freezing", plugins.freezing)]
    members += [("regularizer", reg) for reg in plugins.regularizers]
    for kind, plugin in members:
        provider = str(registry.get(kind, plugin.name).provider)
        for method in PLUGIN_METHODS[kind]:
            bound = getattr(plugin, method, None)
            if callable(bound):
                setattr(
                    plugin,
                    method,
                    _guarded(bound, kind=kind, name=plugin.name, provider=provider, method=method),
                )
    return plugins


def is_oom(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, also when wrapped by another exception."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, torch.cuda.OutOfMemoryError):
            return True
        if isinstance(seen, RuntimeError) and "out of memory" in str(seen).lower():
            return True
        seen = seen.__cause__
    return False


def classify(exc: BaseException) -> tuple[str, str]:
    """(``failure_kind``, reason) for an exception that ended a trial."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "interrupted (Ctrl-C or SIGTERM); rerun the command to resume"
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


def free_accelerator_memory() -> None:
    """Release cached accelerator memory. Call it *outside* the ``except`` block that caught an
    OOM: the exception's traceback keeps the failed step's tensors alive until it is dropped."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
