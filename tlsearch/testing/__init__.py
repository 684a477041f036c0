"""Fixtures and base test classes for plugin authors (like ``optuna.testing``).

Subclass a contract in your pytest file, set ``plugin`` (and ``params``), and inherit the checks
tlsearch relies on::

    from tlsearch.testing import FreezingStrategyContract

    class TestTrainNorms(FreezingStrategyContract):
        plugin = TrainNorms

Helpers: :func:`synthetic_images` (labelled images whose classes differ by structure, not
colour), :class:`TinyBackbone` and :func:`tiny_transfer_model` (a three-group CNN with
BatchNorm), :func:`train_and_record` (a few epochs in the real trainer, recording each one;
``simulate_training`` is its earlier name), :func:`decoded_images` (in-memory images as a trial
receives them). :mod:`tlsearch.testing.disk`: a real small tmpfs to fill (``small_disk``,
``fill``) for full-disk tests.
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
from tlsearch.testing._loop import (
    EpochRecord,
    decoded_images,
    simulate_training,
    snapshot,
    train_and_record,
)
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
    "decoded_images",
    "simulate_training",
    "snapshot",
    "synthetic_images",
    "tiny_transfer_model",
    "train_and_record",
]
