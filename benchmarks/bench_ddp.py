"""One trial on several devices (``training.devices``): training throughput from 1 to N devices.

Trains the same model on the same synthetic images with the same global batch, once per device
count, through the real launcher (:func:`tlsearch.train.distributed.fit_on_devices`: spawned
follower ranks, gradient all-reduce, gathered evaluation), and prints per device count the
training images per second (rank 0's epochs after the first, so start-up and warm-up are
left out), the speed-up over one device, the launch overhead (the whole fit minus its epochs) and
the last epoch's validation accuracy (equal across device counts within tolerance)::

    python benchmarks/bench_ddp.py                                  # CPU: 1 vs 2 gloo processes
    python benchmarks/bench_ddp.py --device cuda --devices 1,2,4,8 --model resnet50 --images 4096

``--model tiny`` is a small CNN built here (no download); any other name is a timm model with
random weights. On the CPU each process gets ``--threads`` threads in total shared out (gloo
ranks on a 2-core machine compete for the same cores: expect no speed-up there; the figure that
matters is the GPU one). ``--json`` prints the rows as JSON instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]


def _model(name: str, image_size: int, classes: int) -> Any:
    import torch
    from torch import nn

    from tlsearch.kinds import BuiltBackbone, TransferModel
    from tlsearch.preprocessing import DataConfig

    torch.manual_seed(0)
    if name == "tiny":
        module: nn.Module = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        width = 128
    else:
        import timm

        module = timm.create_model(name, pretrained=False, num_classes=0)
        width = int(module.num_features)
    built = BuiltBackbone(
        module=module,
        num_features=width,
        data_config=DataConfig(input_size=image_size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        layer_groups=[[n for n, _ in module.named_parameters()]],
        info={"model": name},
    )
    return TransferModel(built, nn.Linear(width, classes))


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from tlsearch.testing import TrainEverything, synthetic_images
    from tlsearch.testing._loop import decoded_images
    from tlsearch.train.distributed import fit_on_devices
    from tlsearch.train.loop import Trainer, TrainSettings

    torch.set_num_threads(args.threads)
    images, targets = synthetic_images(args.images + args.val, num_classes=4, size=args.image_size)
    rows = []
    for devices in [int(d) for d in args.devices.split(",")]:
        model = _model(args.model, args.image_size, 4)
        train = decoded_images(images[: args.images], targets[: args.images], model.data_config)
        val = decoded_images(images[args.images :], targets[args.images :], model.data_config)
        settings = TrainSettings(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=1e-3,
            compile="never",
            feature_cache=False,
            augment="crop_flip",
            precision=args.precision,
        )
        trainer = Trainer(
            model, strategy=TrainEverything(), num_outputs=4, settings=settings, device=args.device, seed=0
        )
        started = time.perf_counter()
        result = fit_on_devices(trainer, train, val, devices=devices)
        total = time.perf_counter() - started
        epochs = result.extras["epochs"][1:] or result.extras["epochs"]
        seconds = sum(e["train_seconds"] for e in epochs)
        seen = sum(e["train_images"] for e in epochs)
        epoch_seconds = sum(h["epoch_seconds"] for h in result.history)
        rows.append(
            {
                "devices": devices,
                "images_per_s": seen / seconds,
                "fit_s": total,
                "launch_s": total - epoch_seconds,
                "accuracy": result.history[-1]["accuracy"],
                "val_loss": result.history[-1]["val_loss"],
            }
        )
    base = rows[0]["images_per_s"]
    for row in rows:
        row["speedup"] = row["images_per_s"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (gloo ranks) or cuda (NCCL ranks)")
    parser.add_argument("--devices", default="1,2", help="device counts to compare, e.g. 1,2,4,8")
    parser.add_argument("--model", default="tiny", help="tiny, or a timm model name (random weights)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--val", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--batch-size", type=int, default=64, help="the global batch, the same for every count"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads, shared out among the ranks")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = run(args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{args.model} @{args.image_size}px, {args.images} images, global batch {args.batch_size}, {args.device}"
    )
    print(
        f"{'devices':>7} {'images/s':>10} {'speed-up':>8} {'fit s':>7} {'launch s':>8} {'accuracy':>8} {'val_loss':>8}"
    )
    for r in rows:
        print(
            f"{r['devices']:>7} {r['images_per_s']:>10.1f} {r['speedup']:>7.2f}x {r['fit_s']:>7.1f} "
            f"{r['launch_s']:>8.1f} {r['accuracy']:>8.4f} {r['val_loss']:>8.4f}"
        )


if __name__ == "__main__":
    main()
