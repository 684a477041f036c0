"""How many CPU threads a trial's intra-op work (PyTorch's convolutions and matmuls) uses.

PyTorch's default is one thread per core, whatever else runs: on a busy machine its threads then
wait for each other at every parallel region (a fine-tune epoch went from 6 s to 80 s at load 6
on 2 cores). tlsearch instead counts the cores that are free when the study starts — the cores
this process may run on (``os.sched_getaffinity``) minus those busy with other work (the 1-minute
load average, or the last half second's busy share where lower, see :func:`load_average`) — and
uses at least one. What decides, first to last:

1. ``--threads N`` or ``training.threads: N`` in the study;
2. ``$TLSEARCH_NUM_THREADS`` (set by ``tlsearch run --workers N`` for each local CPU worker);
3. ``$OMP_NUM_THREADS`` when you set it (PyTorch already honours it; tlsearch leaves it alone);
4. otherwise, the free cores (``auto``).

The thread count is part of what a seed reproduces on the CPU: a reduction split over 2 threads
adds in another order than over 1, so the same seed gives the same result for the same count, and
results that may differ in the last bits (and, after a few epochs, a little more) for another.
Within one process the automatic count is chosen once (see :func:`apply_threads`); pin
``training.threads`` when runs must match exactly across processes, machines or loads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

THREADS_ENV = "TLSEARCH_NUM_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count chosen and why (``source``: ``setting``, ``worker``, ``OMP_NUM_THREADS``,
    ``auto``), with the cores and load it was chosen from."""

    threads: int
    source: str
    cores: int
    load: float | None

    def describe(self) -> str:
        if self.source == "auto":
            return (
                f"{self.threads} CPU thread(s): {self.cores} core(s), load {self.load:.1f} "
                "(set training.threads or --threads to change)"
            )
        return f"{self.threads} CPU thread(s), from {self.source}"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or taskset's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    """How many of this process's cores other work keeps busy: the 1-minute load average, or
    the busy share of those cores over the last half second (:func:`busy_cores`) when that is
    lower — the load average still counts a run that ended seconds ago, so a study started right
    after another would otherwise get one thread on an idle machine. None where neither exists."""
    try:
        average: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        average = None
    now = _busy_now()
    if average is None or now is None:
        return average if now is None else now
    return min(average, now)


def busy_cores(before: str, after: str, cpus: Iterable[int]) -> float | None:
    """Busy cores among ``cpus`` between two readings of ``/proc/stat``: for each CPU, the share
    of its time not idle (``idle`` + ``iowait``), summed. None when a CPU is missing from them."""
    first, second = _cpu_times(before), _cpu_times(after)
    busy = 0.0
    for cpu in cpus:
        if cpu not in first or cpu not in second:
            return None
        (total0, idle0), (total1, idle1) = first[cpu], second[cpu]
        elapsed = total1 - total0
        busy += 1.0 - (idle1 - idle0) / elapsed if elapsed > 0 else 0.0
    return busy


def _cpu_times(stat: str) -> dict[int, tuple[int, int]]:
    """CPU number → (total, idle) jiffies from ``/proc/stat`` (user … steal; guest is in user)."""
    out: dict[int, tuple[int, int]] = {}
    for line in stat.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and len(fields) >= 5:
            values = [int(v) for v in fields[:8]]
            out[int(name[3:])] = (sum(values), values[3] + values[4])
    return out


def _busy_now(seconds: float = 0.5) -> float | None:
    try:
        cpus = sorted(os.sched_getaffinity(0))
        before = Path("/proc/stat").read_text()
        time.sleep(seconds)
        after = Path("/proc/stat").read_text()
    except (AttributeError, OSError):  # not Linux
        return None
    return busy_cores(before, after, cpus)


def free_cores(cores: int, load: float | None) -> int:
    """Cores not busy with other work: ``cores − load``, rounded, at least 1 and at most ``cores``."""
    if load is None:
        return cores
    return max(1, min(cores, round(cores - load)))


def choose_threads(
    requested: int | None = None,
    *,
    environ: dict[str, str] | None = None,
    cores: Callable[[], int] | None = None,
    load: Callable[[], float | None] | None = None,
) -> ThreadChoice | None:
    """The thread count for this process (see the module docstring), or None when
    ``$OMP_NUM_THREADS`` decides and PyTorch already follows it. ``cores`` and ``load`` default
    to :func:`available_cores` and :func:`load_average`."""
    env = os.environ if environ is None else environ
    n = (cores or available_cores)()
    if requested is not None:
        return ThreadChoice(int(requested), "setting", n, None)
    worker = env.get(THREADS_ENV, "").strip()
    if worker.isdigit() and int(worker) >= 1:
        return ThreadChoice(int(worker), "worker", n, None)
    if env.get("OMP_NUM_THREADS", "").strip():
        return None
    busy = (load or load_average)()
    return ThreadChoice(free_cores(n, busy), "auto", n, busy)


_auto: ThreadChoice | None = None  # the first automatic choice of this process: it sticks


def apply_threads(requested: int | None = None) -> ThreadChoice | None:
    """Choose the thread count (:func:`choose_threads`) and set it in PyTorch. An automatic choice
    is made once per process: a second study run from the same script gets the same count (so
    the same results) even if the load changed meanwhile."""
    global _auto
    choice = choose_threads(requested)
    if choice is not None and choice.source == "auto":
        _auto = choice = _auto or choice
    if choice is not None:
        import torch

        torch.set_num_threads(choice.threads)
    return choice
