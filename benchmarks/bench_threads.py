"""CPU threads on a busy machine: PyTorch's default (one per core) against tlsearch's choice (the
cores free, :mod:`tlsearch.train.threads`), under an artificial background load.

The benchmark starts ``--busy`` busy-loop processes, then trains the same small convolutional
network on the same seeded batches in a fresh interpreter for each thread count, and prints the
seconds and the final loss side by side (plus, with the load stopped, 1 thread against all)::

    python benchmarks/bench_threads.py --busy 4 --steps 30

The load average lags by about a minute, so the "chosen" count is what :func:`free_cores` gives
once it has caught up: the cores minus (the load average before the busy loops + the busy loops).
The last column says whether the final loss is bit-identical to the 1-thread run's: the thread
count is part of what a seed reproduces on the CPU (see the README's "Threads").
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_WORKLOAD = r"""
import json, sys, time
import torch
threads, steps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, stride=2, padding=1),
    torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10),
)
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(1)
x = torch.randn(steps, 32, 3, 64, 64, generator=g)
y = torch.randint(0, 10, (steps, 32), generator=g)
start = time.perf_counter()
for i in range(steps):
    loss = torch.nn.functional.cross_entropy(net(x[i]), y[i])
    opt.zero_grad(); loss.backward(); opt.step()
print(json.dumps({"seconds": time.perf_counter() - start, "loss": loss.item()}))
"""


def _busy() -> None:
    while True:
        pass


def _train(threads: int, steps: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", _WORKLOAD, str(threads), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=4, help="background busy-loop processes")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tlsearch.train.threads import available_cores, free_cores, load_average

    cores, ambient = available_cores(), load_average() or 0.0
    default = cores  # PyTorch's own default here: one thread per core it may use
    chosen = free_cores(cores, ambient + args.busy)
    print(f"{cores} core(s), load average {ambient:.2f} before the {args.busy} busy loop(s)")
    reference = _train(1, args.steps)  # a seed's result with one thread, no artificial load
    quiet_all = _train(default, args.steps)
    loops = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.busy)]
    for p in loops:
        p.start()
    try:
        time.sleep(1.0)
        busy_default = _train(default, args.steps)
        busy_chosen = _train(chosen, args.steps)
    finally:
        for p in loops:
            p.terminate()
            p.join()
    print(f"\n{'run':<34}{'threads':>8}{'seconds':>10}{'final loss':>14}  same as 1 thread")
    rows = [
        ("quiet, 1 thread", 1, reference),
        ("quiet, PyTorch default", default, quiet_all),
        (f"busy ({args.busy} loops), PyTorch default", default, busy_default),
        (f"busy ({args.busy} loops), tlsearch auto", chosen, busy_chosen),
    ]
    for name, threads, r in rows:
        same = "yes" if r["loss"] == reference["loss"] else f"no (Δ {r['loss'] - reference['loss']:+.2e})"
        print(f"{name:<34}{threads:>8}{r['seconds']:>10.2f}{r['loss']:>14.8f}  {same}")
    print(
        f"\nbusy machine: tlsearch auto is {busy_default['seconds'] / busy_chosen['seconds']:.1f}x the default"
    )


if __name__ == "__main__":
    main()
