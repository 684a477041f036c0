"""Where a trial's decoded images live, and how its batches reach the training device.

Two placements, chosen by :func:`plan_placement` from a memory budget:

* ``resident``: the whole uint8 cache is copied to the device once (kept there across the trials
  of a process, see :func:`resident_images`) and every batch is a gather of rows on the device —
  no host work and no host→device copy per step. On the CPU this is the memory-mapped array itself.
* ``stream``: a ``DataLoader`` whose workers gather each batch from the memory-mapped uint8 cache
  file, into pinned memory, copied to the device asynchronously while the previous step runs.

Both yield the same batches for the same index lists: uint8 NCHW images (a view in channels-last
memory layout of the NHWC cache) and targets, on the device.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tlsearch.data.cache import DecodedImages

PLACEMENTS = ("auto", "resident", "stream")
DEFAULT_BUDGET_FRACTION = 0.4
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Placement:
    """The decision and why it was taken (recorded in the trial's extras)."""

    where: str  # "resident" | "stream"
    reason: str


def plan_placement(
    nbytes: int,
    *,
    device: torch.device,
    mode: str = "auto",
    free_bytes: int | None = None,
    budget_fraction: float = DEFAULT_BUDGET_FRACTION,
) -> Placement:
    """Resident when the images (``nbytes``) fit ``budget_fraction`` of the device's free memory.

    The rest of the free memory is left to the model, its activations and the optimizer state:
    0.4 leaves more than half, which covers the batch sizes tlsearch trains with. On the CPU the
    images are already in (memory-mapped) host memory, so ``auto`` is always resident.
    ``free_bytes`` defaults to ``torch.cuda.mem_get_info`` on CUDA devices.
    """
    if mode not in PLACEMENTS:
        raise ValueError(f"data placement {mode!r} is not valid; valid choices: {', '.join(PLACEMENTS)}")
    if not 0.0 < budget_fraction <= 1.0:
        raise ValueError(f"budget_fraction must be in (0, 1] but got {budget_fraction}")
    if mode != "auto":
        return Placement(mode, f"asked for {mode}")
    if device.type != "cuda":
        return Placement("resident", f"{device.type}: images stay in host memory")
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    budget = int(free_bytes * budget_fraction)
    gib = 2**30
    if nbytes <= budget:
        return Placement("resident", f"{nbytes / gib:.2f} GiB fit the budget {budget / gib:.2f} GiB")
    return Placement("stream", f"{nbytes / gib:.2f} GiB exceed the budget {budget / gib:.2f} GiB")


# --- resident -----------------------------------------------------------------------------------

_RESIDENT: OrderedDict[tuple[int, str], tuple[weakref.ref[np.ndarray], torch.Tensor]] = OrderedDict()
MAX_RESIDENT = 2  # the train and validation images of the current input size


def resident_images(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` (N, H, W, 3) uint8 as an NHWC tensor on ``device``, copied once and reused.

    Trials of one process share their decoded arrays, so the copy to the GPU is made once per
    study and input size; the two most recently used arrays stay resident.
    """
    if device.type == "cpu":
        with warnings.catch_warnings():  # a read-only memory map: tlsearch never writes to it
            warnings.filterwarnings("ignore", message=".*not writable.*")
            return torch.from_numpy(array)
    key = (id(array), str(device))
    entry = _RESIDENT.get(key)
    if entry is not None and entry[0]() is array:
        _RESIDENT.move_to_end(key)
        return entry[1]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    _RESIDENT[key] = (weakref.ref(array), tensor)
    while len(_RESIDENT) > MAX_RESIDENT:
        _RESIDENT.popitem(last=False)
    return tensor


def is_resident(array: np.ndarray, device: torch.device) -> bool:
    entry = _RESIDENT.get((id(array), str(device)))
    return entry is not None and entry[0]() is array


def release_resident() -> None:
    """Drop every device copy made by :func:`resident_images` (before measuring free memory)."""
    _RESIDENT.clear()


def epoch_order(batches: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The epoch's index batches moved to ``device`` in one copy (not one copy per step)."""
    if not batches:
        return []
    order = torch.cat(list(batches)).to(device, non_blocking=True)
    return list(order.split([len(b) for b in batches]))


class ResidentBatches:
    """Batches gathered from images and targets held on the training device."""

    placement = "resident"

    def __init__(self, data: DecodedImages, device: torch.device) -> None:
        self.device = device
        self.images = resident_images(data.images, device)
        self.targets = torch.from_numpy(np.asarray(data.targets)).to(device)

    def __len__(self) -> int:
        return len(self.targets)

    def iterate(self, batches: Sequence[torch.Tensor]) -> Iterator[Batch]:
        for idx in epoch_order(batches, self.device):
            yield self.images[idx].permute(0, 3, 1, 2), self.targets[idx]


class _BatchDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item = one whole batch (an index tensor in, a gathered uint8 NHWC batch out): one numpy
    gather per batch instead of per-image collation. Workers memory-map the cache file themselves
    instead of receiving a pickled copy of the images."""

    def __init__(self, data: DecodedImages) -> None:
        self.path: Path | None = data.path
        self._array: np.ndarray | None = None if data.path is not None else data.images
        self.targets = torch.from_numpy(np.asarray(data.targets))

    def __len__(self) -> int:
        return len(self.targets)

    def _images(self) -> np.ndarray:
        if self._array is None:
            assert self.path is not None
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._array

    def __getitem__(self, idx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        index = np.asarray(idx, dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(self._images()[index])), self.targets[index]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_array"] = None
        return state


def default_workers() -> int:
    """Loader processes: all cores but one, at most 8 (gathering rows from a memory map is cheap)."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class StreamingBatches:
    """Batches gathered by ``DataLoader`` workers from the memory-mapped cache, pinned, copied
    asynchronously to the device."""

    placement = "stream"

    def __init__(
        self, data: DecodedImages, device: torch.device, *, workers: int | None = None, prefetch: int = 4
    ) -> None:
        self.device = device
        self.dataset = _BatchDataset(data)
        self.workers = default_workers() if workers is None else workers
        self.prefetch = prefetch

    def __len__(self) -> int:
        return len(self.dataset)

    def iterate(self, batches: Sequence[torch.Tensor]) -> Iterator[Batch]:
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            sampler=list(batches),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=self.prefetch if self.workers else None,
        )
        for images, targets in loader:
            yield (
                images.to(self.device, non_blocking=True).permute(0, 3, 1, 2),
                targets.to(self.device, non_blocking=True),
            )


def batch_source(
    data: DecodedImages, *, device: torch.device, placement: str, workers: int | None = None
) -> ResidentBatches | StreamingBatches:
    """The batch source for a placement decided by :func:`plan_placement`."""
    if placement == "resident":
        return ResidentBatches(data, device)
    if placement == "stream":
        return StreamingBatches(data, device, workers=workers)
    raise ValueError(f"placement {placement!r} is not valid; valid choices: resident, stream")


class TensorBatches:
    """Batches gathered from tensors already on the device: cached features, or NCHW images given
    directly to :meth:`tlsearch.train.Trainer.evaluate`."""

    placement = "resident"

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.device = inputs.device
        self.inputs, self.targets = inputs, targets.to(inputs.device)

    def __len__(self) -> int:
        return len(self.targets)

    def iterate(self, batches: Sequence[torch.Tensor]) -> Iterator[Batch]:
        for idx in epoch_order(batches, self.device):
            yield self.inputs[idx], self.targets[idx]
