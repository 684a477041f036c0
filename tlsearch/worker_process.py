"""One local worker process: ``python -m tlsearch.worker_process STUDY --storage S --out DIR``.

What :func:`tlsearch.search.workers.run_workers` starts N of (``Study.run(workers=N)``, ``tlsearch
run --workers N``): a :class:`tlsearch.Worker` joining the study, printing one line per trial
(``[worker <rank>] trial 3 complete value 0.91``), with ``tlsearch worker``'s exit codes (0 the study
has a complete trial; 1 it has none, or the failure policy stopped this worker; 2 a config or
plugin error; 130 Ctrl-C; 143 SIGTERM). It needs no ``tlsearch`` script on ``PATH``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tlsearch.worker_settings import GRACE_PERIOD, HEARTBEAT_INTERVAL, WorkerSettings


def event_printer(prefix: str, echo: Callable[[str], None] | None = None) -> Callable[..., None]:
    """An ``on_event`` that prints one line per trial start and end, and per task outside trials
    (decoding, ranking) when it starts and when it is done, each line starting with ``prefix``."""
    say = echo or (lambda line: print(line, flush=True))

    def event(name: str, **kw: Any) -> None:
        if name == "progress":
            if kw["done"] == 0 or kw["done"] >= kw["total"]:
                state = "started" if kw["done"] == 0 else "done"
                say(f"{prefix}{kw['task']}: {state} ({kw['total']})")
            return
        trial = kw["trial"]
        if name == "trial_start":
            from tlsearch.search.sampling import describe_choices

            say(f"{prefix}trial {trial.number}: {describe_choices(kw['choices'])}")
        elif name == "trial_end":
            detail = (
                f"value {kw['value']:.4g}" if kw["value"] is not None else kw["metrics"].get("failure", "")
            )
            say(f"{prefix}trial {trial.number} {kw['state'].lower()} {detail}".rstrip())

    return event


def _failures(value: str) -> int | None:
    return None if value.lower() == "none" else int(value)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tlsearch.worker_process")
    parser.add_argument(
        "study", type=Path, help="a study YAML file or a study folder (missing: fetched with --artifacts)"
    )
    parser.add_argument("--storage")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--artifacts")
    parser.add_argument("--n-trials", type=int)
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--plugin", action="append", default=[], type=Path)
    parser.add_argument("--heartbeat-interval", type=int, default=HEARTBEAT_INTERVAL)
    parser.add_argument("--grace-period", type=int, default=GRACE_PERIOD)
    parser.add_argument("--max-failures-in-a-row", type=_failures, default=10)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker; returns its exit code."""
    import optuna

    from tlsearch.errors import TlsearchError, disk_full_error
    from tlsearch.noise import quiet_noise
    from tlsearch.search.signals import exit_code, stop_on_sigterm
    from tlsearch.study_api import Study, Worker, worker_study_is_folder

    args = parse_args(sys.argv[1:] if argv is None else argv)
    restore = stop_on_sigterm()  # a scheduler's SIGTERM stops like Ctrl-C: the running trial is requeued
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet_noise()
    rank = os.environ.get("TLSEARCH_WORKER_RANK")
    try:
        is_folder = worker_study_is_folder(args.study, artifacts=args.artifacts)
        open_study = Study.from_dir if is_folder else Study.from_yaml
        study = open_study(
            args.study,
            out=args.out,
            storage=args.storage,
            plugin_files=args.plugin,
            artifacts=args.artifacts,
        )
        settings = WorkerSettings(
            heartbeat_interval=args.heartbeat_interval,
            grace_period=args.grace_period,
            max_failures_in_a_row=args.max_failures_in_a_row,
        )
        result = Worker(study, settings=settings).run(
            n_trials=args.n_trials,
            timeout=args.timeout,
            on_event=event_printer(f"[worker {rank or os.getpid()}] "),
        )
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (tlsearch.search.signals.Terminated)
        code = exit_code(exc)
        cause = "terminated (SIGTERM)" if code != 130 else "interrupted"
        print(f"{cause}: the running trial was recorded and requeued; rerun to resume", file=sys.stderr)
        return code
    except TlsearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        error = disk_full_error(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    finally:
        restore()
    problem = result.problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
