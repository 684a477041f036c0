"""How long the training steps wait for their data, measured without adding synchronisation.

On CUDA, an event is recorded on the training stream before a batch is fetched and one after it is
ready (gathered, copied, normalised, augmented). The GPU time between them is what the step spent on
its data: the preparation kernels plus any idle time while the host waited for a loader worker.
Events are read once, at the end of the epoch. On the CPU the host's clock measures the same span.
"""

from __future__ import annotations

import time

import torch


class DataTimer:
    """Sums the spans between :meth:`start` and :meth:`stop` (a no-op unless ``enabled``)."""

    def __init__(self, device: torch.device, *, enabled: bool) -> None:
        self.enabled = enabled
        self.cuda = device.type == "cuda"
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._seconds = 0.0
        self._begin: float | torch.cuda.Event = 0.0

    def start(self) -> None:
        if not self.enabled:
            return
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._begin = event
        else:
            self._begin = time.perf_counter()

    def stop(self) -> None:
        if not self.enabled:
            return
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            assert isinstance(self._begin, torch.cuda.Event)
            self._events.append((self._begin, event))
        else:
            assert isinstance(self._begin, float)
            self._seconds += time.perf_counter() - self._begin

    def total(self) -> float:
        """Seconds measured so far (synchronises with the recorded events on CUDA)."""
        if self.cuda and self._events:
            self._events[-1][1].synchronize()
            self._seconds += sum(a.elapsed_time(b) for a, b in self._events) / 1000.0
            self._events.clear()
        return self._seconds
