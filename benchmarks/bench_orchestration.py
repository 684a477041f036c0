"""Orchestration overhead per trial, per storage: everything a trial costs except training.

A trial here goes through tlsearch's real objective path — worker record, heartbeat, stale-trial
sweep, budget slot, TPE sampling of the plugins and hyperparameters, plugin instantiation and
guarding, lifecycle hooks (the JSONL trail plugin writes its lines), per-epoch history and
intermediate values, the final user attributes, Optuna's tell and callbacks — with the training
replaced by nothing. The same study runs side by side on SQLite, the journal file and (when
reachable) PostgreSQL; one real short trial (a tiny timm model on 32 px images) is timed in the same
run, to express the overhead as a fraction of it, and as a fraction of a one-minute trial.

    python benchmarks/bench_orchestration.py --trials 40 --epochs 3
    TLSEARCH_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres python benchmarks/bench_orchestration.py

Targets (issue 5): < 50 ms per trial and < 1 % of a one-minute trial.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import yaml

from tlsearch.demo import make_shapes
from tlsearch.search.budget import BudgetCallback
from tlsearch.search.failures import guard_plugins
from tlsearch.search.objective import Objective, StudyData
from tlsearch.search.sampling import instantiate
from tlsearch.search.study import open_study, prepare

POSTGRES_ENV = "TLSEARCH_BENCH_POSTGRES_URL"


class NoTrainingObjective(Objective):
    """The objective with the fine-tuning removed: the storage traffic of a real trial stays."""

    def _run(
        self, trial: optuna.Trial, choices: dict[str, Any], history: list[dict[str, float]], started: float
    ) -> float:
        plugins = guard_plugins(instantiate(choices, self.pm.registry), self.pm.registry)
        trial.set_user_attr("plugins", plugins.names())
        on_epoch_end = self.epoch_callback(trial, history)
        for epoch in range(self.config.training.epochs):
            on_epoch_end(
                epoch,
                {"accuracy": 0.5 + 0.01 * epoch, "val_loss": 1.0, "train_loss": 1.0, "epoch_seconds": 0.0},
            )
        info = {
            "metrics": history[-1],
            "seconds": time.perf_counter() - started,
            "params": 1,
            "trainable_params": 1,
            "feature_cache": False,
            "precision": "fp32",
            "device": "cpu",
        }
        for key, value in info.items():
            trial.set_user_attr(key, value)
        return history[-1]["accuracy"]


def postgres_database() -> str | None:
    """A fresh database on the server ``TLSEARCH_BENCH_POSTGRES_URL`` names (or loopback), or None."""
    url = os.environ.get(POSTGRES_ENV, "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        import psycopg2

        conn = psycopg2.connect(url, connect_timeout=3)
    except Exception:
        return None
    conn.autocommit = True
    name = f"tlsearch_bench_{uuid.uuid4().hex[:8]}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return url.rpartition("/")[0] + "/" + name


def drop_database(url: str) -> None:
    import psycopg2

    server, _, name = url.rpartition("/")
    conn = psycopg2.connect(server + "/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def overhead(study_file: Path, storage: str, out: Path, trials: int) -> list[float]:
    """Seconds per trial of the no-training objective on ``storage`` (first trials included)."""
    config, pm, space, study_dir = prepare(study_file, out_dir=out)
    study = open_study(config, storage)
    data = StudyData(None, None, cache_dir=None)  # type: ignore[arg-type]  # never decoded: no training
    objective = NoTrainingObjective(
        config=config, space=space, pm=pm, data=data, study_dir=study_dir, budget=trials
    )
    times: list[float] = []
    last = [time.perf_counter()]

    def lap(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    study.optimize(objective, n_trials=trials, callbacks=[BudgetCallback(trials), lap], catch=(Exception,))
    return times


def real_trial_seconds(study_file: Path, out: Path) -> float:
    """Wall time of one real trial (the same objective with its training) on a journal storage."""
    from tlsearch.data import load_splits

    config, pm, space, study_dir = prepare(study_file, out_dir=out)
    train, val = load_splits(config.data, task=config.task, seed=0, resolve=config.resolve_path)
    data = StudyData(train, val, cache_dir=study_dir.cache, progress=False)
    study = open_study(config, str(out / "study.journal"))
    objective = Objective(config=config, space=space, pm=pm, data=data, study_dir=study_dir, budget=1)
    started = time.perf_counter()
    study.optimize(objective, n_trials=1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shapes = make_shapes(root / "shapes", per_class=12, val_per_class=4, size=32)
        study = {
            "name": "bench",
            "data": {"train": str(shapes / "train"), "val": str(shapes / "val"), "image_size": 32},
            "space": {
                "backbone": {"timm": {"model": "test_efficientnet", "weights": "random"}},
                "head": ["linear", "mlp"],
                "freezing": ["linear_probe", "full_finetune"],
                "regularizers": {"label_smoothing": {}, "mixup": {}},
            },
            "training": {"epochs": args.epochs, "batch_size": 16},
            "search": {"n_trials": args.trials, "seed": 0, "pruner": "none"},
            "export": {"enabled": False},
        }
        study_file = root / "study.yaml"
        study_file.write_text(yaml.safe_dump(study))

        short_trial = real_trial_seconds(study_file, root / "real")

        storages = {
            "sqlite": f"sqlite:///{root / 'sqlite' / 'study.db'}",
            "journal": str(root / "journal" / "study.journal"),
        }
        (root / "sqlite").mkdir()
        pg = postgres_database()
        if pg:
            storages["postgresql"] = pg
        print(
            f"python {platform.python_version()}, optuna {optuna.__version__}, {platform.machine()}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )
        print(
            f"{args.trials} trials per storage, {args.epochs} epochs each (history + intermediate values), "
            f"TPE; one real short trial (test_efficientnet, 32 px, {args.epochs} epochs): {short_trial:.2f} s"
        )
        print()
        print(
            f"{'storage':<12}{'mean ms':>9}{'median ms':>11}{'p90 ms':>8}{'last10 ms':>11}"
            f"{'of short trial':>16}{'of 60 s trial':>15}"
        )
        try:
            for name, spec in storages.items():
                times = overhead(study_file, spec, root / f"out-{name}", args.trials)
                ms = [t * 1000 for t in times]
                mean = statistics.fmean(ms)
                p90 = sorted(ms)[int(0.9 * (len(ms) - 1))]
                print(
                    f"{name:<12}{mean:>9.1f}{statistics.median(ms):>11.1f}{p90:>8.1f}"
                    f"{statistics.fmean(ms[-10:]):>11.1f}{mean / 1000 / short_trial:>15.2%}{mean / 60000:>15.3%}"
                )
        finally:
            if pg:
                drop_database(pg)
        if not pg:
            print(f"postgresql: skipped (no server; set {POSTGRES_ENV})")


if __name__ == "__main__":
    main()
