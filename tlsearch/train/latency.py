"""Batch-1 latency, measured once per architecture × input size × device and kept in the study's cache.

Timing a forward pass on a busy CPU takes seconds per call and says more about the machine's load
than about the model, so a study measures it only when something reads it (a ``latency_ms``
objective or constraint, :func:`tlsearch.search.objectives.latency_needed`) and at most once per distinct architecture:
:class:`LatencyCache` keys the figure on the model's structure (its module tree and parameter
shapes, not its weights, which do not change the time), the input size and the device, and keeps
it in ``<study>/cache/latency.json``. Trials that differ only in learning rate, regularizer
strength or weights share one measurement. The figure is the minimum of the timed repeats
(:func:`measure_latency`): load only ever adds time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger("tlsearch")

LATENCY_FILE = "latency.json"


LATENCY_WARMUP = 2
LATENCY_RUNS = 7


@torch.inference_mode()
def measure_latency(
    model: torch.nn.Module,
    *,
    input_size: int,
    device: torch.device | str = "cpu",
    runs: int = LATENCY_RUNS,
    warmup: int = LATENCY_WARMUP,
) -> float:
    """Batch-1 forward time of ``model`` in milliseconds (eval mode, fp32): the minimum of ``runs``
    timed calls after ``warmup`` untimed ones, synchronising the GPU around each call. The minimum,
    not the median: other load on the machine only ever adds time, so the fastest run is the
    closest to the model's own cost."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1 but got {runs}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, input_size, input_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    try:
        for i in range(warmup + runs):
            sync()
            started = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - started)
    finally:
        model.train(was_training)
    return min(times) * 1000.0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device}:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{platform.node()}:{platform.machine()}"  # a study folder may be shared by hosts


#: modules that are the identity in eval mode: their rate does not change the time (class-name prefixes)
_IDENTITY_IN_EVAL = ("Dropout", "DropPath", "DropBlock", "AlphaDropout", "FeatureAlphaDropout")


def latency_key(model: torch.nn.Module, *, input_size: int, device: torch.device | str) -> str:
    """The cache key of ``model``'s latency: a hash of its module tree (each module's type and
    settings, ``extra_repr``, except the rate of a dropout, which is the identity at inference),
    its parameter and buffer shapes, the input size and the device (with the GPU's or host's name)."""
    device = torch.device(device)
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        kind = type(module).__qualname__
        settings = "" if kind.startswith(_IDENTITY_IN_EVAL) else module.extra_repr()
        digest.update(f"{name}:{kind}({settings});".encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    digest.update(f"input={input_size};device={_device_name(device)}".encode())
    return digest.hexdigest()[:32]


class LatencyCache:
    """``<cache>/latency.json``: measured batch-1 latencies (ms) by :func:`latency_key`.

    Several workers may share the file: each read merges what is on disk, and each write replaces
    the file atomically, so the worst a race does is measure one architecture twice.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LATENCY_FILE

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return (
            {k: float(v) for k, v in data.items() if isinstance(v, (int, float))}
            if isinstance(data, dict)
            else {}
        )

    def get(self, key: str) -> float | None:
        return self._read().get(key)

    def put(self, key: str, value: float) -> None:
        entries = {**self._read(), key: value}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".latency.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk costs a re-measurement later, never the trial
            log.warning("could not keep the latency measurement in %s: %s", self.path, exc)
            Path(tmp).unlink(missing_ok=True)

    def measure(self, model: torch.nn.Module, *, input_size: int, device: torch.device | str) -> float:
        """The cached latency of ``model``'s architecture, measured now when it is not cached yet."""
        key = latency_key(model, input_size=input_size, device=device)
        cached = self.get(key)
        if cached is not None:
            return cached
        value = measure_latency(model, input_size=input_size, device=device)
        self.put(key, value)
        return value
