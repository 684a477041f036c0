"""Every hook tlsearch calls, grouped by the phase of a study in which it is called.

Implement a hook with a function of the same name decorated with :data:`tlsearch.hookimpl`, in a
module that an entry point of the ``tlsearch`` group names (or a file given with ``--plugin``).
Hooks are always called with keyword arguments, and an implementation may accept fewer arguments
than the spec lists, so specs can grow without breaking plugins.

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
    hyperparameters; a name another plugin already registered is an error naming both providers.
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
