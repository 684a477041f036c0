"""Local workers: ``tlsearch run --workers N`` (``Study.run(workers=N)``) starts N worker processes
on this machine, each ``python -m tlsearch.worker_process`` (no ``tlsearch`` on ``PATH`` needed).

Each worker is an ordinary process that joins the study through its storage, exactly like a
worker started by hand on another machine; the storage (Optuna's) is the only coordination. The
parent validates the config and plugins and creates the study *once* before any worker starts
(creating one study from many processes at once is where storages break), then waits.

Devices: with GPUs visible (``CUDA_VISIBLE_DEVICES``, or all that torch sees), worker *i* is pinned
to GPU *i mod n* through ``CUDA_VISIBLE_DEVICES``; without, the CPU cores free when they start
(affinity minus load, see :mod:`tlsearch.train.threads`) are shared out through
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (at least one each) so N processes do not oversubscribe them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import IO, Any

from tlsearch.errors import TlsearchError
from tlsearch.search.watch import StudyWatcher
from tlsearch.train.threads import THREADS_ENV, available_cores, free_cores, load_average
from tlsearch.worker_settings import WorkerSettings

log = logging.getLogger("tlsearch")

RANK_ENV = "TLSEARCH_WORKER_RANK"
STOP_GRACE_SECONDS = 60.0
WATCH_INTERVAL = 1.0  # seconds between looks at the study while local workers run


def visible_gpus() -> list[str]:
    """The GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else torch's count."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def worker_env(
    rank: int,
    workers: int,
    *,
    gpus: Sequence[str],
    base: dict[str, str] | None = None,
    free: int | None = None,
) -> dict[str, str]:
    """The environment of local worker ``rank`` of ``workers``: its GPU, or its share of the
    ``free`` CPU cores (default: measured now)."""
    env = dict(os.environ if base is None else base)
    env[RANK_ENV] = str(rank)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[rank % len(gpus)]
    else:
        free = free if free is not None else free_cores(available_cores(), load_average())
        threads = str(max(1, free // workers))
        env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, THREADS_ENV: threads})
    return env


def worker_command(
    study: str | Path,
    *,
    storage: str,
    out_dir: str | Path,
    n_trials: int | None = None,
    plugin_files: Sequence[str | Path] = (),
    settings: WorkerSettings | None = None,
    artifacts: str | None = None,
) -> list[str]:
    """The command line of a worker process that joins ``study`` (a YAML file or a study folder):
    :mod:`tlsearch.worker_process` under this Python, whatever is on ``PATH``."""
    cmd = [
        sys.executable,
        "-m",
        "tlsearch.worker_process",
        str(study),
        "--storage",
        storage,
        "--out",
        str(out_dir),
    ]
    if n_trials is not None:
        cmd += ["--n-trials", str(n_trials)]
    if artifacts is not None:
        cmd += ["--artifacts", artifacts]
    for path in plugin_files:
        cmd += ["--plugin", str(path)]
    if settings is not None:
        cmd += ["--heartbeat-interval", str(settings.heartbeat_interval)]
        cmd += ["--grace-period", str(settings.grace_period)]
        failures = settings.max_failures_in_a_row
        cmd += ["--max-failures-in-a-row", str(failures) if failures is not None else "none"]
    return cmd


def run_workers(
    result: Any,
    *,
    storage: str,
    settings: WorkerSettings,
    n_trials: int | None = None,
    plugin_files: Sequence[str | Path] = (),
    on_event: Callable[..., None] | None = None,
    poll_interval: float = WATCH_INTERVAL,
    artifacts: str | None = None,
) -> None:
    """Start ``settings.workers`` local worker processes on the (already created) study and wait for them.

    Without ``on_event`` the workers print to this process's output. With it (what ``tlsearch
    run`` does), each worker writes to ``logs/worker-<rank>.log`` in the study folder and their
    progress reaches ``on_event`` as search events, read from the study every ``poll_interval``
    seconds (:class:`~tlsearch.search.watch.StudyWatcher`): one console shows every worker's trials.

    Ctrl-C (SIGINT) or SIGTERM to this process is passed on to every worker as SIGTERM (which a
    worker started with SIGINT ignored, e.g. under ``nohup … &``, still obeys): each fails its
    trial cleanly and requeues it; a worker still running ``STOP_GRACE_SECONDS`` later is killed
    (its trial is swept right after, see :func:`~tlsearch.search.study.run_study`).
    Raises :class:`TlsearchError` naming the workers that exited with an error (and their logs).
    """
    workers = settings.workers
    root = result.study_dir.root
    gpus = visible_gpus()
    cmd = worker_command(
        root,
        storage=storage,
        out_dir=root,
        n_trials=n_trials,
        plugin_files=plugin_files,
        settings=settings,
        artifacts=artifacts,
    )
    logs = [worker_log(root, rank) for rank in range(workers)] if on_event is not None else []
    with ExitStack() as stack:
        outputs = [stack.enter_context(_open_log(path)) for path in logs]
        free = None if gpus else free_cores(available_cores(), load_average())  # measured once
        procs = [
            subprocess.Popen(
                cmd,
                env=worker_env(rank, workers, gpus=gpus, free=free),
                stdout=outputs[rank] if outputs else None,
                stderr=subprocess.STDOUT if outputs else None,
            )
            for rank in range(workers)
        ]
        watcher = StudyWatcher(result.study, on_event) if on_event is not None else None
        try:
            codes = _wait(procs, watcher, poll_interval)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (tlsearch.search.signals.Terminated)
            stop_workers(procs)
            raise
    failed = [(rank, code) for rank, code in enumerate(codes) if code != 0]
    if failed:
        detail = ", ".join(
            f"worker {rank} exited with code {code}"
            + (f": {_last_line(logs[rank])} (its output: {logs[rank]})" if logs else "")
            for rank, code in failed
        )
        raise TlsearchError(f"{detail}; completed trials are kept, rerun the command to resume")


def worker_log(root: Path, rank: int) -> Path:
    """Where local worker ``rank`` of a study folder writes its output when a console watches."""
    return root / "logs" / f"worker-{rank}.log"


def _last_line(path: Path) -> str:
    """The last line a worker wrote: its one-line reason when it exits non-zero."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return "(no output)"
    return lines[-1] if lines else "(no output)"


def _open_log(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = path.open("a", encoding="utf-8")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    out.write(f"--- {started} worker started by tlsearch run (pid {os.getpid()})\n")
    out.flush()
    return out


def _wait(procs: Sequence[subprocess.Popen[Any]], watcher: StudyWatcher | None, interval: float) -> list[int]:
    """Wait for every process; meanwhile (and once after) let ``watcher`` report the study's progress."""
    if watcher is None:
        return [p.wait() for p in procs]
    warned = False
    while True:
        running = [p for p in procs if p.poll() is None]
        try:
            watcher.poll()
        except Exception as exc:  # a missed look at the study must not end the workers' run
            if not warned:
                log.warning("could not read the study's progress (%s); the workers go on", exc)
                warned = True
        if not running:
            return [int(p.returncode) for p in procs]
        with suppress(subprocess.TimeoutExpired):
            running[0].wait(timeout=interval)


def stop_workers(procs: Sequence[subprocess.Popen[Any]], *, grace: float = STOP_GRACE_SECONDS) -> None:
    """Stop the workers with SIGTERM (each fails its running trial cleanly and requeues it; SIGINT
    could be ignored), then kill any still running ``grace`` seconds later."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
