"""``tlsearch worker``: join a study from any machine, through its shared storage."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from tlsearch.cli import main
from tlsearch.cli.noise import quiet_noise, verbose_option
from tlsearch.cli.options import plugin_option, threads_option


def _echo_event(prefix: str) -> Any:
    def event(name: str, **kw: Any) -> None:
        if name == "progress":  # work outside trials (decoding, ranking): a line when it starts and ends
            if kw["done"] == 0 or kw["done"] >= kw["total"]:
                state = "started" if kw["done"] == 0 else "done"
                click.echo(f"{prefix}{kw['task']}: {state} ({kw['total']})")
            return
        trial = kw["trial"]
        if name == "trial_start":
            from tlsearch.search.sampling import describe_choices

            click.echo(f"{prefix}trial {trial.number}: {describe_choices(kw['choices'])}")
        elif name == "trial_end":
            detail = (
                f"value {kw['value']:.4g}" if kw["value"] is not None else kw["metrics"].get("failure", "")
            )
            click.echo(f"{prefix}trial {trial.number} {kw['state'].lower()} {detail}".rstrip())

    return event


@main.command()
@click.argument("study", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--storage",
    help="the study's Optuna storage URL (e.g. postgresql://user@host/db); "
    "default: the study folder's own storage",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="study folder for checkpoints and caches (default: runs/<study name>, or STUDY if it is a folder)",
)
@click.option("--n-trials", type=click.IntRange(min=1), help="the study's total budget of finished trials")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), help="seconds this worker runs at most"
)
@plugin_option
@threads_option
@verbose_option
@click.option(
    "--heartbeat-interval",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="seconds between a running trial's heartbeats",
)
@click.option(
    "--grace-period",
    type=click.IntRange(min=1),
    default=120,
    show_default=True,
    help="seconds without a heartbeat after which another machine's trial counts as lost",
)
def worker(
    study: Path,
    storage: str | None,
    out_dir: Path | None,
    n_trials: int | None,
    timeout: float | None,
    plugin_files: tuple[Path, ...],
    threads: int | None,
    verbose: bool,
    heartbeat_interval: int,
    grace_period: int,
) -> None:
    """Join the study STUDY (a study YAML file, or a study folder) and run trials until its budget is done.

    Start as many as you like, on any machines that reach the storage: the budget of finished
    trials holds across all of them, and a worker that dies has its trial retried by the others.
    Exits 0 when the study has a complete trial, 1 when it has none or this worker was stopped by
    the failure policy, 2 on a config or plugin error, 130 on Ctrl-C, 143 on SIGTERM.
    """
    import optuna

    from tlsearch.config import load_config
    from tlsearch.search import StudyDir, run_study
    from tlsearch.search.signals import exit_code, stop_on_sigterm

    # A scheduler's SIGTERM stops like Ctrl-C: the running trial is requeued.
    click.get_current_context().call_on_close(stop_on_sigterm())

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet_noise(verbose=verbose)
    if study.is_dir():
        config = StudyDir(study).load_config()
        out_dir = out_dir or study
    else:
        config = load_config(study)
    if threads:
        config = config.model_copy(
            update={"training": config.training.model_copy(update={"threads": threads})}
        )
    rank = os.environ.get("TLSEARCH_WORKER_RANK")
    try:
        result = run_study(
            config,
            out_dir=out_dir,
            n_trials=n_trials,
            timeout=timeout,
            storage=storage,
            plugin_files=plugin_files,
            progress=False,
            on_event=_echo_event(f"[worker {rank or os.getpid()}] "),
            join=True,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
        )
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (tlsearch.search.signals.Terminated)
        code = exit_code(exc)
        cause = "terminated (SIGTERM)" if code != 130 else "interrupted"
        click.echo(f"{cause}: the running trial was recorded and requeued; rerun to resume", err=True)
        sys.exit(code)
    problem = result.problem()
    if problem:
        click.echo(f"error: {problem}", err=True)
        sys.exit(1)
