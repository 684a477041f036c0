"""Every hook tlsearch calls, grouped by the phase of a study in which it is called.

Implement a hook with a function of the same name decorated with :data:`tlsearch.hookimpl`, in a
module that an entry point of the ``tlsearch`` group names (or a file given with ``--plugin``).
Hooks are always called through pluggy's hook relay with keyword arguments, and an implementation
may accept fewer arguments than the spec lists, so specs can grow without breaking plugins; an
argument the spec does not list is a plugin error naming the plugin, the hook and the valid names.

pluggy's features hold for every hook: ``@hookimpl(tryfirst=True)`` / ``trylast=True`` order the
implementations; ``@hookimpl(wrapper=True)`` (new-style; old-style ``hookwrapper=True`` too) runs
around them; ``unregister`` removes a plugin's hooks and the classes it registered;
``TLSEARCH_TRACE_HOOKS=1`` traces every call. tlsearch calls a hook once per non-wrapper
implementation, with every wrapper around each call, so that each registered class is recorded
with its provider and a raising observer is named while the others still run; a wrapper of a
register hook therefore runs once per providing plugin.

These docstrings are the reference documentation of the hooks (``tlsearch plugins hooks`` prints them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tlsearch import hookspec
from tlsearch.registration import Register

if TYPE_CHECKING:  # kept lazy: importing the hook reference must not import optuna
    import optuna

    from tlsearch.config import StudyConfig


# --- Phase 1: registration (once, when the plugin manager loads) -------------------------------


@hookspec
def tlsearch_register_backbones(register: Register) -> None:
    """Add :class:`tlsearch.kinds.Backbone` subclasses with ``register.add(cls)``.

    ``register`` refuses a class that is not a backbone, has an invalid name or declares invalid
    hyperparameters; a name another plugin already registered is an error naming both providers
    and how to resolve it (uninstall, ``TLSEARCH_BLOCK_PLUGINS=<entry point>``, or drop the file).

    Called once per implementation with a ``register`` of its own (so each class is recorded with
    the plugin that added it, for ``tlsearch plugins list`` and the exported model's provenance).
    An implementation that raises skips its installed plugin with a warning, or is an error for a
    built-in or a plugin file; a wrapper that raises is reported under its own plugin.
    """


@hookspec
def tlsearch_register_heads(register: Register) -> None:
    """Add :class:`tlsearch.kinds.Head` subclasses with ``register.add(cls)``."""


@hookspec
def tlsearch_register_freezing_strategies(register: Register) -> None:
    """Add :class:`tlsearch.kinds.FreezingStrategy` subclasses with ``register.add(cls)``."""


@hookspec
def tlsearch_register_regularizers(register: Register) -> None:
    """Add :class:`tlsearch.kinds.Regularizer` subclasses with ``register.add(cls)``."""


# --- Phase 2: the study (observers) --------------------------------------------------------------
#
# Observers do not decide a trial's fate: an implementation that raises is logged as a warning
# naming the plugin and the hook (once per plugin and hook; later ones at debug level) and the
# trial keeps its result. To end a trial on purpose:
#
# * raise :class:`tlsearch.errors.FailTrial` ("reason") from ``tlsearch_trial_start``,
#   ``tlsearch_epoch_end`` or ``tlsearch_trial_end`` (while ``state`` is ``COMPLETE``): the trial
#   ends ``FAIL``, ``failure_kind`` ``plugin``, its ``failure`` naming the plugin, hook and reason;
# * raise :class:`optuna.TrialPruned` from ``tlsearch_epoch_end`` (or ``tlsearch_trial_start``):
#   the trial ends ``PRUNED``.
#
# Raised from any other hook, or after the trial ended otherwise, both are logged and ignored.
#
# A wrapper (``@hookimpl(wrapper=True)``) of an observer hook runs around each implementation; what
# the wrapper itself raises follows the same rules, under the wrapper's plugin name.


@hookspec
def tlsearch_study_start(study: optuna.Study, config: StudyConfig, out_dir: str) -> None:
    """A process starts (or resumes) working on ``study``; ``out_dir`` is the study folder."""


@hookspec
def tlsearch_trial_start(trial: optuna.Trial, choices: dict[str, Any], out_dir: str) -> None:
    """A trial starts. ``choices`` holds the sampled plugins and hyperparameters, e.g.
    ``{"backbone": "timm", "backbone.timm.model": "resnet18", "train.lr": 0.001, …}``.
    Raise :class:`tlsearch.errors.FailTrial` to fail it before it trains."""


@hookspec
def tlsearch_epoch_end(trial: optuna.Trial, epoch: int, metrics: dict[str, float], out_dir: str) -> None:
    """An epoch of ``trial`` ended (0-based ``epoch``). ``metrics`` holds ``train_loss``,
    ``val_loss``, the task's metrics (``accuracy`` or ``r2``/``mae``) and ``epoch_seconds``.
    Raise :class:`optuna.TrialPruned` to prune the trial, :class:`tlsearch.errors.FailTrial` to fail it."""


@hookspec
def tlsearch_trial_end(
    trial: optuna.Trial, state: str, value: float | None, metrics: dict[str, float], out_dir: str
) -> None:
    """A trial ended in ``state`` (``COMPLETE``, ``PRUNED`` or ``FAIL``) with objective ``value``
    (None unless complete) and its last ``metrics`` (with ``failure`` reason when it failed).
    Called after the checkpoint of a complete trial is saved; raising
    :class:`tlsearch.errors.FailTrial` then fails the trial (it is called again with ``FAIL``)."""


@hookspec
def tlsearch_study_end(study: optuna.Study, out_dir: str) -> None:
    """This process finished its share of the study's budget."""


# --- Phase 3: export -----------------------------------------------------------------------------


@hookspec
def tlsearch_export_done(path: str, metadata: dict[str, Any]) -> None:
    """A model was exported to ``path`` and passed its checks; ``metadata`` is what it carries."""
