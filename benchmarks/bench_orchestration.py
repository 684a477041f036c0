"""Orchestration overhead per trial, per storage: everything a trial costs except training.

A trial here goes through tlsearch's real objective path — worker record, heartbeat, stale-trial
sweep, budget slot, TPE sampling of the plugins and hyperparameters, plugin instantiation and
guarding, lifecycle hooks (the JSONL trail plugin writes its lines), per-epoch history and
intermediate values, the final user attributes (written by the objective's own
``record_finished``, with the values a real trial of this run recorded), Optuna's tell and
callbacks — with the training replaced by nothing. Every trial must end COMPLETE, or the run stops.
Each storage is measured twice: as configured (epochs that end within ``PROGRESS_INTERVAL`` of
each other share one commit, here all of them) and with every epoch committed on its own (what
trials whose epochs take longer than that pay). The same study runs side by side on SQLite, the journal file and (when
reachable) PostgreSQL; one real short trial (a tiny timm model on 32 px images) is timed in the same
run, to express the overhead as a fraction of it, and as a fraction of a one-minute trial.

    python benchmarks/bench_orchestration.py --trials 40 --epochs 3
    TLSEARCH_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres python benchmarks/bench_orchestration.py

Targets (issue 5): < 50 ms per trial and < 1 % of a one-minute trial.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import yaml
from _postgres import create_database, drop_database

from tlsearch.demo import make_shapes
from tlsearch.search.budget import BudgetCallback
from tlsearch.search.failures import guard_plugins
from tlsearch.search.objective import Objective
from tlsearch.search.sampling import instantiate
from tlsearch.search.study import open_study, prepare
from tlsearch.search.study_data import StudyData
from tlsearch.search.trial_writes import PROGRESS_INTERVAL, TrialWriter

POSTGRES_ENV = "TLSEARCH_BENCH_POSTGRES_URL"


FINAL_ATTRS = ("params", "trainable_params", "feature_cache", "precision", "device", "latency_ms", "gflops")


class NoTrainingObjective(Objective):
    """The objective with the fine-tuning removed: the storage traffic of a real trial stays.
    ``recorded`` holds the user attributes of a real trial, replayed as this trial's results."""

    recorded: dict[str, Any]

    def _run(
        self,
        trial: optuna.Trial,
        writer: TrialWriter,
        choices: dict[str, Any],
        history: list[dict[str, float]],
        started: float,
    ) -> float:
        plugins = guard_plugins(instantiate(choices, self.pm.registry), self.pm.registry)
        writer.stage(plugins=plugins.names())
        on_epoch_end = self.epoch_callback(trial, writer, history)
        for epoch, metrics in enumerate(self.recorded["history"]):
            on_epoch_end(epoch, dict(metrics))
        self.record_finished(
            trial,
            writer,
            metrics=self.recorded["metrics"],
            started=started,
            speed=self.recorded["speed"],
            backbone=self.recorded["backbone"],
            info={key: self.recorded.get(key) for key in FINAL_ATTRS},
        )
        return float(self.recorded["metrics"][self.config.metric])


def postgres_database() -> str | None:
    """A fresh database on the server ``TLSEARCH_BENCH_POSTGRES_URL`` names (or loopback), or None."""
    url = os.environ.get(POSTGRES_ENV, "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        return create_database(url)
    except Exception:
        return None


def overhead(
    study_file: Path,
    storage: str,
    out: Path,
    *,
    trials: int,
    recorded: dict[str, Any],
    progress_interval: float = PROGRESS_INTERVAL,
) -> list[float]:
    """Seconds per trial of the no-training objective on ``storage`` (first trials included)."""
    config, pm, space, study_dir = prepare(study_file, out_dir=out)
    study_dir.save_config(config)  # the study folder, as `tlsearch run` makes it (the trail goes there)
    study = open_study(config, storage)
    data = StudyData(None, None, cache_dir=None)  # type: ignore[arg-type]  # never decoded: no training
    objective = NoTrainingObjective(
        config=config,
        space=space,
        pm=pm,
        data=data,
        study_dir=study_dir,
        budget=trials,
        progress_interval=progress_interval,
    )
    objective.recorded = recorded
    times: list[float] = []
    last = [time.perf_counter()]

    def lap(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    study.optimize(objective, n_trials=trials, callbacks=[BudgetCallback(trials), lap], catch=(Exception,))
    failed = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.COMPLETE]
    if failed or len(times) != trials:
        reason = failed[0].user_attrs.get("failure") if failed else "too few trials"
        raise SystemExit(f"{storage}: {len(failed)} of {len(times)} trials did not complete ({reason})")
    return times


def real_trial(study_file: Path, out: Path) -> tuple[float, dict[str, Any]]:
    """Wall time and user attributes of one real trial (the same objective with its training) on a
    journal storage."""
    from tlsearch.data import load_splits

    config, pm, space, study_dir = prepare(study_file, out_dir=out)
    train, val = load_splits(config.data, task=config.task, seed=0, resolve=config.resolve_path)
    data = StudyData(train, val, cache_dir=study_dir.cache, progress=False)
    study = open_study(config, str(out / "study.journal"))
    objective = Objective(config=config, space=space, pm=pm, data=data, study_dir=study_dir, budget=1)
    started = time.perf_counter()
    study.optimize(objective, n_trials=1)
    seconds = time.perf_counter() - started
    trial = study.trials[-1]
    if trial.state != optuna.trial.TrialState.COMPLETE:
        raise SystemExit(f"the real trial failed: {trial.user_attrs.get('failure')}")
    return seconds, trial.user_attrs


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

        short_trial, recorded = real_trial(study_file, root / "real")

        kinds = ["sqlite", "journal"]
        databases: list[str] = []
        probe = postgres_database()
        if probe:
            drop_database(probe)
            kinds.append("postgresql")

        def fresh_storage(kind: str, folder: Path) -> str:
            """An empty storage of ``kind`` for one measurement."""
            folder.mkdir(parents=True)
            if kind == "sqlite":
                return f"sqlite:///{folder / 'study.db'}"
            if kind == "journal":
                return str(folder / "study.journal")
            url = postgres_database()
            if url is None:
                raise SystemExit("the PostgreSQL server stopped answering")
            databases.append(url)
            return url

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
            f"{'storage':<24}{'mean ms':>9}{'median ms':>11}{'p90 ms':>8}{'last10 ms':>11}"
            f"{'of short trial':>16}{'of 60 s trial':>15}"
        )
        variants = (("", PROGRESS_INTERVAL), (", epoch commits", 0.0))
        try:
            for kind, (variant, interval) in itertools.product(kinds, variants):
                label = kind + variant
                folder = root / "storages" / label.replace(", ", "-").replace(" ", "-")
                times = overhead(
                    study_file,
                    fresh_storage(kind, folder),
                    folder / "out",
                    trials=args.trials,
                    recorded=recorded,
                    progress_interval=interval,
                )
                ms = [t * 1000 for t in times]
                mean = statistics.fmean(ms)
                p90 = sorted(ms)[int(0.9 * (len(ms) - 1))]
                print(
                    f"{label:<24}{mean:>9.1f}{statistics.median(ms):>11.1f}{p90:>8.1f}"
                    f"{statistics.fmean(ms[-10:]):>11.1f}{mean / 1000 / short_trial:>15.2%}{mean / 60000:>15.3%}"
                )
        finally:
            for url in databases:
                drop_database(url)
        if "postgresql" not in kinds:
            print(f"postgresql: skipped (no server; set {POSTGRES_ENV})")


if __name__ == "__main__":
    main()
