"""One trial on several devices: data-parallel training with ``torch.distributed`` (``training.devices``).

The worker process is rank 0. It spawns ``devices - 1`` follower processes with
``torch.multiprocessing`` (spawn, never fork: a worker that already ran CUDA trials cannot fork),
joins them in a process group (NCCL on CUDA, gloo on the CPU) and trains its own shard. Why not
torchrun's elastic agent: the worker already owns the Optuna trial (its heartbeat, its grouped
writes, the pruner) and must stay the single process that talks to the study; an agent would add a
launcher layer above the worker, restart ranks on failure (we want the *trial* to fail instead) and
need its own command line on every cluster recipe.

What each rank does (:class:`Parallel`, the Trainer's small hooks):

- **the same global batch**: every rank draws the same epoch order and augmentation parameters
  (the same seed), then takes its contiguous shard of each batch; each rank's gradient is weighted
  by its share of the batch and summed (one all-reduce per step, a flat buffer per dtype), so a
  step equals the single-device step on the whole batch (BatchNorm in training mode normalises
  with its shard's statistics, as in PyTorch's DDP; its running statistics are averaged across
  ranks after each epoch);
- **the full validation set**: each rank evaluates its contiguous part, the outputs are all-gathered
  and every rank computes the same metrics from all of them, so patience and the kept epoch agree;
- **one talker**: rank 0 alone calls the study's ``on_epoch_end`` (reports, pruning, deadline) and
  broadcasts its decision (go on, stop with a reason, abort) to the others after every epoch;
- **the shared image cache**: a memory-mapped decoded-image cache travels as its path and each rank
  maps the same file (the page cache shares it); nothing is decoded twice.

Faults: a follower that raises or dies makes rank 0's next collective fail (gloo: the peer's socket
closes; otherwise the process group's timeout, ``TLSEARCH_DDP_TIMEOUT`` seconds, default 300);
rank 0 then collects the follower's reason and raises :class:`RankFailed`, which fails the trial and
not the worker; the other followers are terminated. When rank 0 fails or is pruned, the followers
are told (abort) or terminated after a short grace, so nothing hangs.

Trials on cached features (a frozen backbone, and the solved linear probe) run on rank 0 alone: the
head trains in seconds on features, and there is nothing to spread (``extras["distributed"]`` says
so).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import pickle  # in-memory hand-over to our own spawned ranks only; never read from disk or a peer
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException, ProcessRaisedException

from tlsearch.errors import ConfigError, TlsearchError
from tlsearch.train.best import StopTraining

if TYPE_CHECKING:
    from tlsearch.data.cache import DecodedImages
    from tlsearch.train.loop import FitEpochsCallback, FitResult, Trainer

EpochCallback = Callable[[int, dict[str, float]], None]

DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for a rank before the trial fails
START_TIMEOUT = 300.0  # seconds the followers have to start (import torch, unpickle the trainer)
GRACE = 10.0  # seconds rank 0 waits for followers to exit (or report why they died) before killing them
CONTINUE, STOP, ABORT = 0, 1, 2
_DECISION_BYTES = 512


class RankFailed(TlsearchError, RuntimeError):
    """A rank of a distributed trial raised or died: the trial fails with this reason. A runtime
    error too, so that a follower's "CUDA out of memory" is classified (and retried at half the
    batch) as rank 0's own would be (:func:`tlsearch.search.failures.is_oom`)."""


class _Aborted(BaseException):
    """Rank 0 ended the trial (pruned or failed): a follower stops training quietly."""


def ddp_timeout() -> float:
    """The collectives' timeout in seconds (``TLSEARCH_DDP_TIMEOUT``, default 300)."""
    raw = os.environ.get("TLSEARCH_DDP_TIMEOUT")
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"TLSEARCH_DDP_TIMEOUT must be a number of seconds > 0 but got {raw!r}")
    return value


def check_devices(devices: int, device: torch.device) -> None:
    """Refuse, before any work, a device count this machine cannot give: more CUDA devices than
    visible, or several devices of a kind without a process-group backend here (only CUDA/NCCL
    and CPU/gloo are supported)."""
    if devices < 1:
        raise ConfigError(f"training.devices must be >= 1 but got {devices}")
    if devices == 1:
        return
    if not dist.is_available():
        raise ConfigError(f"training.devices is {devices} but this PyTorch has no torch.distributed")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if devices > count:
            raise ConfigError(
                f"training.devices is {devices} but only {count} CUDA device(s) are visible here "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
                f"use at most {count}, or device: cpu for gloo processes"
            )
        if not dist.is_nccl_available():
            raise ConfigError(f"training.devices is {devices} on CUDA but this PyTorch lacks NCCL")
    elif device.type == "cpu":
        if not dist.is_gloo_available():
            raise ConfigError(f"training.devices is {devices} on the CPU but this PyTorch lacks gloo")
    else:
        raise ConfigError(
            f"training.devices is {devices} but training.device resolves to {device.type!r}: "
            "several devices work on cuda (NCCL) or cpu (gloo) only"
        )


def rank_device(device: torch.device, rank: int) -> torch.device:
    """The device of ``rank``: ``cuda:<rank>`` (after ``CUDA_VISIBLE_DEVICES``), else the CPU."""
    return torch.device("cuda", rank) if device.type == "cuda" else device


# --- the Trainer's hooks -----------------------------------------------------------------------


@dataclass
class Parallel:
    """This rank's part in a distributed trial; the Trainer calls it at the few places where data
    parallelism differs from one device (see the module doc)."""

    rank: int
    world: int
    _weights: list[float] = field(default_factory=list)
    _step: int = 0

    def shard_epoch(
        self, batches: Sequence[torch.Tensor], draws: Sequence[Any] | None
    ) -> tuple[list[torch.Tensor], list[Any] | None]:
        """This rank's contiguous shard of each of the epoch's (global) batches, and of their
        per-image augmentation draws; remembers each shard's share of its batch for the gradient."""
        local: list[torch.Tensor] = []
        local_draws: list[Any] | None = None if draws is None else []
        self._weights, self._step = [], 0
        for i, batch in enumerate(batches):
            if len(batch) < self.world:
                raise TlsearchError(
                    f"a training batch of {len(batch)} image(s) cannot be split over {self.world} "
                    "devices; use a larger batch_size or fewer devices"
                )
            shard = batch.tensor_split(self.world)[self.rank]
            local.append(shard)
            self._weights.append(len(shard) / len(batch))
            if draws is not None and local_draws is not None:
                d = draws[i]
                local_draws.append(
                    replace(
                        d,
                        crop=None if d.crop is None else d.crop.tensor_split(self.world)[self.rank],
                        erase=None if d.erase is None else d.erase.tensor_split(self.world)[self.rank],
                    )
                )
        return local, local_draws

    def seed_rank(self, seed: int) -> None:
        """Give each rank its own global random stream for the steps (dropout, drop-path, mixup),
        so the shards' noise is independent; rank 0 keeps the single-device stream. Everything
        before the first step (the model, the regularizers' setup) was drawn identically on all."""
        if self.rank:
            torch.manual_seed(seed + 7919 * self.rank)

    def reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Sum the ranks' gradients, each weighted by its shard's share of the batch: the mean loss's
        gradient over the whole global batch, on every rank (so every rank takes the same step)."""
        weight = self._weights[self._step] if self._step < len(self._weights) else 1.0 / self.world
        self._step += 1
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        _all_reduce_flat(grads, scale=weight)

    def end_epoch(
        self, modules: Sequence[torch.nn.Module], running: torch.Tensor, seen: int
    ) -> tuple[torch.Tensor, int]:
        """The epoch's summed training loss and image count over all ranks; the float buffers of
        ``modules`` (BatchNorm's running statistics) averaged, so every rank evaluates the same model."""
        totals = torch.stack([running.detach().float(), torch.tensor(float(seen), device=running.device)])
        dist.all_reduce(totals)
        for module in modules:
            buffers = [b for b in module.buffers() if b.is_floating_point()]
            _all_reduce_flat(buffers, scale=1.0 / self.world)
        return totals[0], int(round(float(totals[1])))

    def _range(self, n: int, rank: int) -> tuple[int, int]:
        base, extra = divmod(n, self.world)
        start = rank * base + min(rank, extra)
        return start, start + base + (1 if rank < extra else 0)

    def eval_batches(self, n: int, batch_size: int) -> list[torch.Tensor]:
        """This rank's contiguous part of the ``n`` validation images, in batches."""
        start, stop = self._range(n, self.rank)
        return list(torch.arange(start, stop).split(batch_size))

    def gather(
        self, outputs: torch.Tensor, targets: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's evaluation outputs and targets, in image order: the full validation set."""
        sizes = [stop - start for start, stop in (self._range(n, r) for r in range(self.world))]
        return _all_gather_rows(outputs, sizes), _all_gather_rows(targets, sizes)

    def broadcast_decision(self, code: int, reason: str = "", detail: str = "") -> None:
        buf = torch.zeros(_DECISION_BYTES, dtype=torch.uint8)
        text = f"{reason}\0{detail}".encode()[: _DECISION_BYTES - 3]
        buf[0], buf[1], buf[2] = code, len(text) // 256, len(text) % 256
        buf[3 : 3 + len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        self._broadcast(buf)

    def receive_decision(self) -> tuple[int, str, str]:
        buf = torch.zeros(_DECISION_BYTES, dtype=torch.uint8)
        buf = self._broadcast(buf)
        length = int(buf[1]) * 256 + int(buf[2])
        reason, _, detail = bytes(buf[3 : 3 + length].tolist()).decode(errors="replace").partition("\0")
        return int(buf[0]), reason, detail

    @staticmethod
    def _broadcast(buf: torch.Tensor) -> torch.Tensor:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        moved = buf.to(device) if device is not None else buf
        dist.broadcast(moved, src=0)
        return moved.cpu()


def _all_reduce_flat(tensors: Sequence[torch.Tensor], *, scale: float) -> None:
    """All-reduce (sum) ``tensors`` in place after scaling, one flat buffer per device and dtype."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        if scale != 1.0:
            flat.mul_(scale)
        dist.all_reduce(flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def _all_gather_rows(local: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Concatenate every rank's ``local`` rows (``sizes`` of them each), padding to the largest."""
    longest = max(sizes)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def leader_callback(parallel: Parallel, real: EpochCallback | None) -> EpochCallback:
    """Rank 0's ``on_epoch_end``: the study's own callback, then its decision broadcast to all."""

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        try:
            if real is not None:
                real(epoch, metrics)
        except StopTraining as stop:
            parallel.broadcast_decision(STOP, stop.reason, stop.detail)
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                parallel.broadcast_decision(ABORT)
            raise
        parallel.broadcast_decision(CONTINUE)

    return on_epoch_end


def follower_callback(parallel: Parallel) -> EpochCallback:
    """A follower's ``on_epoch_end``: wait for rank 0's decision and follow it."""

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        code, reason, detail = parallel.receive_decision()
        if code == STOP:
            raise StopTraining(reason, detail)
        if code == ABORT:
            raise _Aborted()

    return on_epoch_end


# --- launching ----------------------------------------------------------------------------------


def _portable(data: DecodedImages) -> tuple[DecodedImages, str | None]:
    """``data`` for a follower: images that are the decoded-image cache file's (memory-mapped after
    a hit, in memory right after the decode that wrote it) travel as its path, and the follower
    maps the same file; other images (built by hand) travel as they are."""
    images = data.images
    if data.path is None:
        return data, None
    try:
        cached = np.load(data.path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return data, None
    if cached.shape != images.shape or cached.dtype != images.dtype:
        return data, None
    return replace(data, images=np.empty((0, *images.shape[1:]), dtype=images.dtype)), str(data.path)


def _reopen(data: DecodedImages, path: str | None) -> DecodedImages:
    if path is None:
        return data
    return replace(data, images=np.load(path, mmap_mode="r", allow_pickle=False))


class _Pickler(pickle.Pickler):
    """Pickles the trainer for the followers; a function that says how it travels
    (``_tlsearch_pickle``: the failure guards around plugin methods) is rebuilt that way."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType):
            how = getattr(obj, "_tlsearch_pickle", None)
            if how is not None:
                return how
        return NotImplemented


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _local_modules() -> list[tuple[str, str]]:
    """The study's plugin files imported here (``tlsearch_local_*`` modules): a follower imports them
    under the same names before it unpickles plugin instances of their classes."""
    found = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.startswith("tlsearch_local_") and path:
            found.append((name, str(path)))
    return found


def _import_local(modules: Sequence[tuple[str, str]]) -> None:
    for name, path in modules:
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def fit_on_devices(
    trainer: Trainer,
    train: DecodedImages,
    val: DecodedImages,
    *,
    devices: int,
    on_epoch_end: EpochCallback | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    fit_epochs: FitEpochsCallback | None = None,
) -> FitResult:
    """``trainer.fit`` on ``devices`` devices (one: just ``fit``); this process is rank 0 and alone
    calls ``on_epoch_end``/``on_epoch_start``. Raises :class:`RankFailed` when a follower dies.

    ``fit_epochs`` (the budget's re-planned schedule) applies on one device only: rank 0 alone
    would re-plan, and the ranks' schedules would part; on several devices the planned epochs
    stand and the study's timeout still ends the trial at an epoch boundary (``on_epoch_end``)."""
    if devices <= 1:
        return trainer.fit(
            train, val, on_epoch_end=on_epoch_end, on_epoch_start=on_epoch_start, fit_epochs=fit_epochs
        )
    if trainer.use_feature_cache():
        result = trainer.fit(
            train, val, on_epoch_end=on_epoch_end, on_epoch_start=on_epoch_start, fit_epochs=fit_epochs
        )
        result.extras["distributed"] = {
            "devices": 1,
            "reason": "trained on cached features: rank 0 alone (nothing to spread)",
        }
        return result
    if len(val) < devices:
        raise ConfigError(
            f"training.devices is {devices} but the validation set has only {len(val)} image(s)"
        )
    timeout = ddp_timeout()
    backend = "nccl" if trainer.device.type == "cuda" else "gloo"
    threads = max(1, torch.get_num_threads() // devices)
    train_p, train_path = _portable(train)
    val_p, val_path = _portable(val)
    try:
        payload = _dumps({"trainer": trainer, "train": (train_p, train_path), "val": (val_p, val_path)})
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise TlsearchError(
            f"training.devices is {devices}: the trial's model and plugins must be picklable to reach "
            f"the follower ranks, but {type(exc).__name__}: {exc}"
        ) from None
    store = dist.TCPStore(
        "127.0.0.1", 0, devices, is_master=True, timeout=timedelta(seconds=timeout), wait_for_workers=False
    )
    context = mp.start_processes(
        _follower,
        args=(payload, _local_modules(), store.port, devices, backend, timeout, threads),
        nprocs=devices - 1,
        join=False,
        start_method="spawn",
    )
    del payload
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    parallel = Parallel(0, devices)
    started = time.perf_counter()
    try:
        _wait_started(store, context, devices)
        if backend == "nccl":
            torch.cuda.set_device(
                trainer.device if trainer.device.index is not None else rank_device(trainer.device, 0)
            )
        dist.init_process_group(
            backend, store=store, rank=0, world_size=devices, timeout=timedelta(seconds=timeout)
        )
        trainer.parallel = parallel
        try:
            result = trainer.fit(
                train,
                val,
                on_epoch_end=leader_callback(parallel, on_epoch_end),
                on_epoch_start=on_epoch_start,
            )
        except BaseException as exc:
            failure = _follower_failure(context, wait=GRACE if isinstance(exc, RuntimeError) else 0.5)
            if failure is not None:
                raise RankFailed(failure) from None
            raise
        failure = _follower_failure(context, wait=timeout)
        if failure is not None:
            raise RankFailed(failure)
    finally:
        trainer.parallel = None
        torch.set_num_threads(previous_threads)
        if dist.is_initialized():
            dist.destroy_process_group()
        _terminate(context)
    result.extras["distributed"] = {
        "devices": devices,
        "backend": backend,
        "seconds": time.perf_counter() - started,
    }
    return result


def _describe(exc: BaseException, world: int) -> str:
    """A follower's failure in a sentence: which rank, and its exception's last line or its signal."""
    if isinstance(exc, ProcessRaisedException):
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return f"rank {exc.error_index + 1} of {world} failed: {lines[-1].strip() if lines else exc}"
    if isinstance(exc, ProcessExitedException):
        how = f"was killed by {exc.signal_name}" if exc.signal_name else f"exited with code {exc.exit_code}"
        return f"rank {exc.error_index + 1} of {world} (pid {exc.error_pid}) {how}"
    return f"a follower rank failed: {exc}"


def _follower_failure(context: Any, *, wait: float) -> str | None:
    """Why a follower failed (None: all ended well, or are still running after ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    world = len(context.processes) + 1
    while True:
        try:
            if context.join(timeout=max(0.0, min(0.2, deadline - time.monotonic()))):
                return None
        except ProcessException as exc:
            return _describe(exc, world)
        if time.monotonic() >= deadline:
            return None


def _wait_started(store: Any, context: Any, world: int) -> None:
    """Wait until every follower has started and connected, failing at once if one dies first."""
    deadline = time.monotonic() + START_TIMEOUT
    while store.add("started", 0) < world - 1:
        failure = _follower_failure(context, wait=0.05)
        if failure is not None:
            raise RankFailed(f"{failure} (while starting)")
        if time.monotonic() > deadline:
            raise RankFailed(f"the follower ranks did not start within {START_TIMEOUT:.0f}s")


def _terminate(context: Any) -> None:
    """End any follower still alive (it waits on a rank 0 that has moved on), then reap them."""
    for process in context.processes:
        if process.is_alive():
            process.terminate()
    for process in context.processes:
        process.join(GRACE)
        if process.is_alive():
            process.kill()
            process.join()


def _follower(
    index: int,
    payload: bytes,
    modules: list[tuple[str, str]],
    port: int,
    world: int,
    backend: str,
    timeout: float,
    threads: int,
) -> None:
    """A follower rank's life: load the trainer, join the group, train its shards, follow rank 0."""
    rank = index + 1
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    _import_local(modules)
    state = pickle.loads(payload)  # bytes rank 0 made for us a moment ago (see fit_on_devices)
    trainer = state["trainer"]
    train, val = _reopen(*state["train"]), _reopen(*state["val"])
    trainer.device = rank_device(trainer.device, rank)
    if backend == "nccl":
        # a collective that times out raises here instead of NCCL's default, which ends the process
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
        torch.cuda.set_device(trainer.device)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timedelta(seconds=timeout))
    store.add("started", 1)
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout)
    )
    parallel = Parallel(rank, world)
    trainer.parallel = parallel
    with contextlib.suppress(_Aborted):  # rank 0 ended the trial and waits for this process to exit
        trainer.fit(train, val, on_epoch_end=follower_callback(parallel))
    # after an error, no destroy: rank 0 may be gone or blocked; the process exits and reports it
    dist.destroy_process_group()
