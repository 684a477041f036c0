"""Fixtures and base test classes for plugin authors (like ``optuna.testing``).

Subclass a contract in your pytest file, set ``plugin`` (and ``params``), and inherit the checks
tlsearch relies on::

    from tlsearch.testing import FreezingStrategyContract

    class TestTrainNorms(FreezingStrategyContract):
        plugin = TrainNorms

Helpers: :func:`synthetic_images` (labelled images whose classes differ by structure, not
colour), :class:`TinyBackbone` and :func:`tiny_transfer_model` (a three-group CNN with
BatchNorm), :func:`simulate_training` (the trainer's calling sequence, recording each epoch).
Needs pytest (a dev dependency); importing it never downloads anything.
"""

from __future__ import annotations

from tlsearch.testing._contracts import (
    BackboneContract,
    FreezingStrategyContract,
    HeadContract,
    PluginContract,
    RegularizerContract,
    TrainEverything,
)
from tlsearch.testing._loop import EpochRecord, build_optimizer, simulate_training, snapshot, task_loss
from tlsearch.testing._tiny import TinyBackbone, TinyCNN, synthetic_images, tiny_transfer_model

__all__ = [
    "BackboneContract",
    "EpochRecord",
    "FreezingStrategyContract",
    "HeadContract",
    "PluginContract",
    "RegularizerContract",
    "TinyBackbone",
    "TinyCNN",
    "TrainEverything",
    "build_optimizer",
    "simulate_training",
    "snapshot",
    "synthetic_images",
    "task_loss",
    "tiny_transfer_model",
]
