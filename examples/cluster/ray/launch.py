"""Run a tlsearch study on a Ray cluster: the creator step on the driver, then one Ray task per
worker, each with one GPU, each running an ordinary ``tlsearch worker`` process.

The study stays in PostgreSQL, not in a Ray driver, so pruning, the global budget, heartbeats and
retries of a dead worker's trial work exactly as everywhere else. (Ray Tune's ``OptunaSearch`` is
not used on purpose: it keeps the study in one driver process and cannot prune.)

    ray start --head   # or connect to an existing cluster
    python launch.py study.yaml --storage postgresql://user@db/tlsearch --out /shared/runs/study --workers 8

Every node needs tlsearch and the study's plugins installed, and (until artefacts move to an object
store) the ``--out`` folder on a shared file system.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def creator_command(study: str, *, storage: str, out: str) -> list[str]:
    """The creator step: validate, check the images, create the study with its warm start; no trial."""
    return [
        sys.executable,
        "-m",
        "tlsearch",
        "run",
        study,
        "--storage",
        storage,
        "--out",
        out,
        "--workers",
        "0",
    ]


def worker_command(study: str, *, storage: str, out: str) -> list[str]:
    """One worker: joins the study and runs trials until its global budget is done."""
    return [sys.executable, "-m", "tlsearch", "worker", study, "--storage", storage, "--out", out]


def worker_env(rank: int) -> dict[str, str]:
    return {**os.environ, "TLSEARCH_WORKER_RANK": str(rank)}  # shifts each worker's sampler seed


def run_worker(rank: int, study: str, storage: str, out: str) -> int:
    """The body of each Ray task (Ray sets ``CUDA_VISIBLE_DEVICES`` to the task's GPU)."""
    return subprocess.call(worker_command(study, storage=storage, out=out), env=worker_env(rank))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--storage", required=True, help="postgresql://… every node reaches")
    parser.add_argument("--out", required=True, help="the study folder, on a shared file system")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--gpus-per-worker", type=float, default=1.0)
    args = parser.parse_args(argv)

    import ray  # only the launcher needs Ray; the workers are plain tlsearch processes

    code = subprocess.call(creator_command(args.study, storage=args.storage, out=args.out))
    if code != 0:
        return code
    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))
    task = ray.remote(num_gpus=args.gpus_per_worker, max_retries=1)(run_worker)
    codes = ray.get([task.remote(rank, args.study, args.storage, args.out) for rank in range(args.workers)])
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
