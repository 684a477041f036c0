"""Fast-trial benchmarks: run side by side in one process, print ratios. CPU or GPU, no download.

Sub-commands (see benchmarks/README.md, "Fast trials"):

* ``throughput``: images/s of a tlsearch trial (``Trainer.fit``, full fine-tuning) against a
  hand-written timm loop on the same model, batch, precision, layout and optimizer.
* ``data-wait``: the share of training-step time spent waiting for / preparing data, per placement
  (resident on the device, streamed by DataLoader workers).
* ``feature-cache``: a frozen-backbone trial without the feature cache, with a cold cache (computes
  and stores the features) and with a warm cache (a later trial of the study).
* ``compile``: the hand-written loop eager and ``torch.compile``d: throughput, compile warm-up and
  the break-even number of images, beside what ``tlsearch.train.compiling`` assumes for the model.

Examples::

    python benchmarks/bench_trials.py throughput --model efficientnet_lite0 --size 64 --batch 32 --steps 10
    python benchmarks/bench_trials.py data-wait --model efficientnet_lite0 --size 64 --batch 32 --steps 10
    python benchmarks/bench_trials.py feature-cache --model efficientnet_lite0 --size 64 --batch 32 --steps 10
    # on a GPU, the issue's reference settings (all of it in one run: benchmarks/gpu/check.sh):
    python benchmarks/bench_trials.py throughput --model resnet50 --size 224 --batch 128 --steps 50
    python benchmarks/bench_trials.py compile --model vit_small_patch16_224 --size 224 --batch 128 --steps 50
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tlsearch_builtins.backbones._timm import TimmBackbone
from tlsearch_builtins.freezing._static import FullFinetune, LinearProbe
from torch import nn

from tlsearch.data import DecodedImages, ImageList
from tlsearch.kinds import TransferModel
from tlsearch.train import (
    Trainer,
    TrainSettings,
    configure_backends,
    resolve_device,
    resolve_precision,
    use_channels_last,
)
from tlsearch.train.compiling import DEFAULT as COMPILE_DEFAULT
from tlsearch.train.compiling import REFERENCE as COMPILE_REFERENCE
from tlsearch.train.compiling import CompileProfile

NUM_CLASSES = 10
# The reference, measured on one H100 (torch 2.11, timm 1.0.29, 224 px, batch 128, data on
# the GPU, forward + backward + SGD): eager bf16 autocast + channels_last, images/s. A trial on an
# H100 at those settings should reach at least these figures.
H100_EAGER_BF16 = {
    "efficientnet_lite0": 5233.0,
    "resnet50": 3722.0,
    "convnext_tiny": 2570.0,
    "vit_small_patch16_224": 4193.0,
}


def build(model_name: str, size: int, seed: int = 0) -> TransferModel:
    """The trial's model: the built-in timm backbone (random weights) + a linear head."""
    torch.manual_seed(seed)
    built = TimmBackbone(model=model_name, weights="random").build()
    built.data_config = built.data_config.with_size(size)
    return TransferModel(built, nn.Linear(built.num_features, NUM_CLASSES))


@functools.cache
def synthetic(n: int, size: int, seed: int) -> DecodedImages:
    """``n`` random uint8 images as if decoded from the cache (what a trial receives); made once
    per process (6,400 images at 224 px take seconds to draw, longer than a GPU trains on them)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    targets = rng.integers(0, NUM_CLASSES, n).astype(np.int64)
    source = ImageList([], [], [str(i) for i in range(NUM_CLASSES)])
    return DecodedImages(images, targets, source, key=f"synthetic-{n}-{size}-{seed}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hand_loop(
    args: argparse.Namespace, device: torch.device, *, compiled: bool = False
) -> tuple[float, float]:
    """The reference: what one would write by hand with timm. Data already on the device as a float
    batch; fwd + bwd + the same optimizer (AdamW, fused on CUDA) under the same autocast and layout.
    With ``compiled`` the model is ``torch.compile``d (default mode). Returns the images/s of the
    timed steps and the seconds the untimed warm-up steps took (compilation included)."""
    model = build(args.model, args.size).to(device)
    channels_last = use_channels_last(model.backbone, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compiled:
        model.compile()
    precision = resolve_precision(args.precision, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda" or None)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)
    model.train()

    def step() -> None:
        with precision.autocast():
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync(device)
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - start), warm_up


def trial(
    args: argparse.Namespace,
    device: torch.device,
    *,
    strategy: Any = None,
    epochs: int = 2,
    cache_dir: str | None = None,
    profile: bool = False,
    **settings: Any,
) -> Any:
    """One tlsearch trial over ``batch × steps`` synthetic images; epoch 1 is the warm-up."""
    train = synthetic(args.batch * args.steps, args.size, seed=0)
    val = synthetic(args.batch, args.size, seed=1)
    trainer = Trainer(
        build(args.model, args.size),
        strategy=strategy or FullFinetune(),
        num_outputs=NUM_CLASSES,
        settings=TrainSettings(
            epochs=epochs,
            batch_size=args.batch,
            lr=1e-3,
            precision=args.precision,
            compile="never",
            **settings,
        ),
        device=device,
        feature_cache_dir=cache_dir,
        profile=profile,
    )
    return trainer.fit(train, val)


def rate(result: Any) -> float:
    last = result.extras["epochs"][-1]
    return last["train_images"] / last["train_seconds"]


def cmd_throughput(args: argparse.Namespace, device: torch.device) -> None:
    rows = []
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
        hand, _ = hand_loop(args, device)
        augmented = rate(trial(args, device, augment=True))
        plain = rate(trial(args, device, augment=False))
        rows.append((hand, augmented, plain))
    hand, augmented, plain = (float(np.median(c)) for c in zip(*rows, strict=True))
    print(f"{'':44s}{'img/s':>10s}{'× hand loop':>14s}")
    print(f"{'hand-written timm loop (data on device)':44s}{hand:10.1f}{1.0:14.3f}")
    print(f"{'tlsearch trial, no augmentation':44s}{plain:10.1f}{plain / hand:14.3f}")
    print(f"{'tlsearch trial, GPU-style crop+flip':44s}{augmented:10.1f}{augmented / hand:14.3f}")
    print("target: trial ≥ 0.95 × hand loop with the same settings")
    reference = H100_EAGER_BF16.get(args.model)
    if device.type == "cuda" and reference is not None and (args.size, args.batch) == (224, 128):
        print(
            f"the issue's H100 eager bf16 figure for {args.model}: {reference:.0f} img/s; "
            f"trial / reference = {plain / reference:.3f} (no augmentation), "
            f"{augmented / reference:.3f} (crop+flip); target ≥ 1 on an H100"
        )


def cmd_data_wait(args: argparse.Namespace, device: torch.device) -> None:
    print(f"{'placement':32s}{'step ms':>10s}{'data ms':>10s}{'data share':>12s}")
    for label, settings in (
        ("resident (on the device)", {"data_placement": "resident"}),
        ("stream, 0 workers", {"data_placement": "stream", "loader_workers": 0}),
        (f"stream, {args.workers} workers", {"data_placement": "stream", "loader_workers": args.workers}),
    ):
        last = trial(args, device, profile=True, **settings).extras["epochs"][-1]
        steps = last["steps"]
        print(
            f"{label:32s}{1000 * last['train_seconds'] / steps:10.2f}{1000 * last['data_seconds'] / steps:10.2f}"
            f"{last['data_seconds'] / last['train_seconds']:12.1%}"
        )
    print("target: data share < 5% for a dataset that fits on the GPU (resident)")


def cmd_feature_cache(args: argparse.Namespace, device: torch.device) -> None:
    def timed(**kw: Any) -> tuple[float, Any]:
        start = time.perf_counter()
        # the epoch loop on all three, so only the cache differs (solved probes: bench_probe.py)
        result = trial(args, device, strategy=LinearProbe(), epochs=args.epochs, solve_probe=False, **kw)
        return time.perf_counter() - start, result

    with tempfile.TemporaryDirectory() as cache:
        without, r0 = timed(feature_cache=False)
        cold, r1 = timed(cache_dir=cache)
        warm, r2 = timed(cache_dir=cache)
    assert not r0.used_feature_cache and r1.used_feature_cache and r2.extras["feature_cache"]["hit"]
    print(f"frozen-backbone trial, {args.epochs} epochs over {args.batch * args.steps} images")
    print(f"{'':36s}{'seconds':>10s}{'speed-up':>10s}{'val acc':>10s}")
    for label, seconds, r in (
        ("without feature cache", without, r0),
        ("cold cache (computes + stores)", cold, r1),
        ("warm cache (a later trial)", warm, r2),
    ):
        print(f"{label:36s}{seconds:10.3f}{without / seconds:10.1f}{r.metrics['accuracy']:10.3f}")
    print("target: warm cache ≥ 20× faster than without")


def cmd_compile(args: argparse.Namespace, device: torch.device) -> None:
    """Measure what ``tlsearch.train.compiling`` assumes for this model: eager and compiled
    throughput and the compile warm-up, hence the break-even number of training images."""
    eager, eager_warm = hand_loop(args, device)
    compiled, compiled_warm = hand_loop(args, device, compiled=True)
    # the warm-up steps' own time at the steady rate is not compilation
    warm_up = max(0.0, compiled_warm - args.warmup * args.batch / compiled)
    measured = CompileProfile(eager, compiled, warm_up)
    assumed = COMPILE_REFERENCE.get(args.model, COMPILE_DEFAULT)
    source = "measured on an H100" if args.model in COMPILE_REFERENCE else "default for unknown models"
    print(
        f"{'':48s}{'eager img/s':>12s}{'compiled':>10s}{'× eager':>9s}{'warm-up s':>11s}{'break-even img':>16s}"
    )
    for label, prof in (("measured here", measured), (f"tlsearch assumes ({source})", assumed)):
        print(
            f"{label:48s}{prof.eager_rate:12.1f}{prof.compiled_rate:10.1f}"
            f"{prof.compiled_rate / prof.eager_rate:9.2f}{prof.warm_up_s:11.1f}{prof.break_even_images():16.3g}"
        )
    print(f"(eager warm-up steps took {eager_warm:.1f} s; {args.warmup} warm-up steps, {args.steps} timed)")
    print(
        "a trial compiles when its training images ≥ 2 × break-even (tlsearch/train/compiling.py); "
        "where the two rows disagree by far on this device, update REFERENCE there"
    )


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["throughput", "data-wait", "feature-cache", "compile"])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (one epoch of the trial)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of the hand-written loop")
    parser.add_argument(
        "--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="throughput: interleaved repeats (median)")
    parser.add_argument("--workers", type=int, default=2, help="data-wait: loader workers for streaming")
    parser.add_argument("--epochs", type=int, default=5, help="feature-cache: epochs of the frozen trial")
    args = parser.parse_args()
    device = resolve_device(args.device)
    configure_backends(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"{args.command}: {args.model} {args.size}px batch {args.batch}, {args.steps} steps, "
        f"{resolve_precision(args.precision, device).name} on {device} ({name}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {_load()}"
    )
    commands = {
        "throughput": cmd_throughput,
        "data-wait": cmd_data_wait,
        "feature-cache": cmd_feature_cache,
        "compile": cmd_compile,
    }
    commands[args.command](args, device)


if __name__ == "__main__":
    main()
