"""Many workers on one PostgreSQL: direct connections against Optuna's gRPC storage proxy.

N local worker processes (default 32) share one study with a global budget of tiny trials, first
each connected to PostgreSQL directly, then all through one ``tlsearch storage-proxy``. A trial
here is tlsearch's storage traffic without the training (light workers: they import no torch):
the worker record, tlsearch's heartbeat thread (Optuna's on the direct path), the stale-trial
sweep and the budget slot from one read, TPE sampling staged by the trial writer, one grouped
commit of the choices, per-epoch history and intermediate values (``writer.progress``, pruning
checks) and the final attributes, then Optuna's tell and the budget callback — the same calls as
:class:`tlsearch.search.objective.Objective`, from the same modules.

Printed side by side: per-trial orchestration overhead (the phase's wall time, from the moment
every worker is ready to the last one's end, divided by the finished trials; and the median
trial's own wall time inside a worker), peak PostgreSQL connections of the bench's database
(``pg_stat_activity``, polled every 20 ms over one connection), the exact count of finished
trials, storage errors (failed trials other than budget skips, and workers that exited non-zero),
and the ratio proxy / direct.

    python benchmarks/bench_proxy.py --workers 32 --trials 320 --epochs 3
    TLSEARCH_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres python benchmarks/bench_proxy.py

Targets (issue 17 part 2): through the proxy, peak connections ≤ 4 whatever N, exactly
``--trials`` finished, 0 storage errors, overhead ≤ 1.5× the direct path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from _postgres import create_database, drop_database
from optuna.trial import TrialState

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ENV = "TLSEARCH_BENCH_POSTGRES_URL"
STUDY = "bench_proxy"


# -- one light worker ------------------------------------------------------------------------------


def worker_main(args: argparse.Namespace) -> None:
    """One worker: open the storage, say ready, wait for the go, run trials until the budget is done."""
    from tlsearch.errors import TlsearchError
    from tlsearch.search.budget import FINISHED, SKIPPED_ATTR, BudgetCallback, BudgetReached, wait_for_slot
    from tlsearch.search.recovery import WORKER_ATTR, TrialHeartbeat, WorkerIdentity, sweep_stale_trials
    from tlsearch.search.storage import make_storage
    from tlsearch.search.trial_writes import TrialWriter

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(args.storage)
    sampler = optuna.samplers.TPESampler(multivariate=True, group=True, n_startup_trials=10, seed=args.rank)
    study = optuna.load_study(study_name=STUDY, storage=storage, sampler=sampler)
    identity = WorkerIdentity.current().to_dict()
    seconds: list[float] = []
    errors: list[str] = []
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.01)

    def objective(trial: optuna.Trial) -> float:
        started = time.perf_counter()
        try:
            trial.set_user_attr(WORKER_ATTR, identity)
            writer = TrialWriter(trial)
            with TrialHeartbeat(study, trial._trial_id, interval=args.heartbeat):
                trials = storage.get_all_trials(
                    study._study_id, deepcopy=False, states=(TrialState.RUNNING, *FINISHED)
                )
                running = [t for t in trials if t.state == TrialState.RUNNING]
                sweep_stale_trials(study, running=running, heartbeats_checked=True)
                try:
                    wait_for_slot(study, trial, budget=args.trials, trials=trials)
                except BudgetReached as exc:
                    writer.flush(**{SKIPPED_ATTR: True, "failure": str(exc), "failure_kind": "skipped"})
                    study.stop()
                    raise
                with writer.sampling():
                    lr = trial.suggest_float("train.lr", 1e-4, 1e-1, log=True)
                    head = trial.suggest_categorical("head", ["linear", "mlp"])
                    freezing = trial.suggest_categorical("freezing", ["linear_probe", "full_finetune"])
                    smoothing = trial.suggest_float("label_smoothing.eps", 0.0, 0.2)
                choices = {
                    "train.lr": lr,
                    "head": head,
                    "freezing": freezing,
                    "label_smoothing.eps": smoothing,
                }
                writer.flush(backbone_model="test_efficientnet", choices=choices, seed=trial.number)
                history: list[dict[str, float]] = []
                for epoch in range(args.epochs):
                    accuracy = 0.5 + 0.1 * epoch - abs(lr - 0.01)
                    history.append({"accuracy": accuracy, "loss": 1.0 / (epoch + 1)})
                    writer.report(accuracy, epoch)
                    writer.progress(history=history, work={"gflop": 0.1 * (epoch + 1), "epochs": epoch + 1})
                    trial.should_prune()
                writer.flush(
                    metrics=history[-1],
                    seconds=time.perf_counter() - started,
                    speed={"data": "device", "compiled": False, "epoch_seconds": [0.0] * args.epochs},
                    backbone={"model": "test_efficientnet", "gflops": 0.1, "params": 1000},
                    params=1000,
                    trainable_params=100,
                    feature_cache=False,
                    precision="fp32",
                    device="cpu",
                    gflops=0.1,
                    best_epoch=args.epochs - 1,
                    epochs_run=args.epochs,
                )
            return history[-1]["accuracy"]
        except BudgetReached:
            raise
        except Exception as exc:  # a storage error: counted, the trial fails
            errors.append(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            seconds.append(time.perf_counter() - started)

    code = 0
    try:
        study.optimize(objective, catch=(Exception,), callbacks=[BudgetCallback(args.trials)])
    except (TlsearchError, Exception) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        code = 1
    print(
        json.dumps({"rank": args.rank, "seconds": seconds, "errors": errors, "end": time.time()}), flush=True
    )
    sys.exit(code)


# -- the bench -------------------------------------------------------------------------------------


class PeakConnections:
    """The peak count of the database's client connections (but the watcher's own), from a thread."""

    def __init__(self, url: str) -> None:
        import psycopg2

        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        with self.conn.cursor() as cur:
            while not self._done.wait(0.02):
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                )
                self.peak = max(self.peak, int(cur.fetchone()[0]))

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        self.conn.close()
        return self.peak


def dispose(storage: Any) -> None:
    """Close a storage's database connections now (not whenever it is garbage-collected)."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()
    else:
        storage.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_mode(mode: str, server: str, args: argparse.Namespace) -> dict[str, Any]:
    """One phase: a fresh database, the study, N workers (through a proxy when ``mode`` is proxy)."""
    from tlsearch.search.budget import FINISHED
    from tlsearch.search.storage import make_storage

    database = create_database(server, "tlsearch_bench_proxy")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    proxy = None
    try:
        dispose(make_storage(database, heartbeat_interval=None))  # Optuna's tables, before anyone connects
        spec = database
        if mode == "proxy":
            port = free_port()
            proxy = subprocess.Popen(
                [sys.executable, "-m", "tlsearch", "storage-proxy", "--storage", database]
                + ["--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            spec = f"grpc://127.0.0.1:{port}"
            make_storage(spec)  # waits until it answers
        creator = make_storage(spec, heartbeat_interval=None)
        optuna.create_study(study_name=STUDY, storage=creator)
        dispose(creator)  # the bench's own connections must not count
        peak = PeakConnections(database)
        with tempfile.TemporaryDirectory() as tmp:
            go = Path(tmp) / "go"
            ready = [Path(tmp) / f"ready-{rank}" for rank in range(args.workers)]
            procs = [
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", "--storage", spec, "--rank", str(rank)]
                    + ["--ready", str(ready[rank]), "--go", str(go), "--trials", str(args.trials)]
                    + ["--epochs", str(args.epochs), "--heartbeat", str(args.heartbeat)],
                    env=env,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for rank in range(args.workers)
            ]
            while not all(r.exists() for r in ready):
                if any(p.poll() is not None for p in procs):
                    break
                time.sleep(0.05)
            began = time.time()
            go.touch()
            outputs = [p.communicate()[0] for p in procs]
        connections = peak.stop()
        reports = []
        for out in outputs:
            lines = [line for line in out.splitlines() if line.startswith("{")]
            reports.append(
                json.loads(lines[-1]) if lines else {"seconds": [], "errors": ["no report"], "end": began}
            )
        reader = make_storage(database, heartbeat_interval=None)
        trials = reader.get_all_trials(reader.get_study_id_from_name(STUDY))
        dispose(reader)
        finished = sum(t.state in FINISHED for t in trials)
        failed = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("skipped")]
        wall = max(r["end"] for r in reports) - began
        per_trial = [s for r in reports for s in r["seconds"]]
        return {
            "mode": mode,
            "finished": finished,
            "running_left": sum(t.state == TrialState.RUNNING for t in trials),
            "skipped": sum(bool(t.user_attrs.get("skipped")) for t in trials),
            "storage_errors": len(failed) + sum(len(r["errors"]) for r in reports),
            "workers_failed": sum(p.returncode != 0 for p in procs),
            "peak_connections": connections,
            "wall_s": wall,
            "ms_per_finished_trial": 1000 * wall / max(1, finished),
            "median_trial_ms": 1000 * statistics.median(per_trial) if per_trial else None,
            "first_errors": [e for r in reports for e in r["errors"]][:3],
        }
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=30)
        drop_database(database)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument(
        "--trials", type=int, default=320, help="the study's global budget of finished trials"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--heartbeat", type=float, default=5.0, help="tlsearch's heartbeat interval (s)")
    parser.add_argument("--modes", default="direct,proxy")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    server = os.environ.get(POSTGRES_ENV, "postgresql://postgres@127.0.0.1:5432/postgres")
    load = os.getloadavg()
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"{args.workers} workers, budget {args.trials} trials of {args.epochs} epochs, no training"
    )
    results = [run_mode(mode, server, args) for mode in args.modes.split(",")]
    rows = [
        (f"finished trials (exact: {args.trials})", "finished"),
        ("RUNNING left", "running_left"),
        ("budget skips", "skipped"),
        ("storage errors", "storage_errors"),
        ("workers exited non-zero", "workers_failed"),
        ("peak PostgreSQL connections", "peak_connections"),
        ("phase wall (s)", "wall_s"),
        ("overhead per finished trial (ms)", "ms_per_finished_trial"),
        ("median trial inside a worker (ms)", "median_trial_ms"),
    ]
    print("| | " + " | ".join(r["mode"] for r in results) + " |")
    print("|---|" + "---:|" * len(results))
    for label, key in rows:
        cells = [f"{r[key]:.1f}" if isinstance(r[key], float) else str(r[key]) for r in results]
        print(f"| {label} | " + " | ".join(cells) + " |")
    by_mode = {r["mode"]: r for r in results}
    if {"direct", "proxy"} <= by_mode.keys():
        ratio = by_mode["proxy"]["ms_per_finished_trial"] / by_mode["direct"]["ms_per_finished_trial"]
        median = (by_mode["proxy"]["median_trial_ms"] or 0) / (by_mode["direct"]["median_trial_ms"] or 1)
        print(f"proxy / direct: {ratio:.2f}× per finished trial, {median:.2f}× the median trial")
    for r in results:
        if r["first_errors"]:
            print(f"{r['mode']} errors: {r['first_errors']}")
    load = os.getloadavg()
    print(f"# load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
