"""``tlsearch worker``: join a study from any machine, through its shared storage."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tlsearch.cli import main
from tlsearch.cli.noise import quiet_noise, verbose_option
from tlsearch.cli.options import artifacts_option, plugin_option, threads_option
from tlsearch.worker_settings import GRACE_PERIOD, HEARTBEAT_INTERVAL, WorkerSettings


@main.command(short_help="Join a study and run its trials until the budget is done.")
@click.argument("study", type=click.Path(path_type=Path))
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
@artifacts_option
@plugin_option
@threads_option
@verbose_option
@click.option(
    "--heartbeat-interval",
    type=click.IntRange(min=1),
    default=HEARTBEAT_INTERVAL,
    show_default=True,
    help="seconds between a running trial's heartbeats",
)
@click.option(
    "--grace-period",
    type=click.IntRange(min=1),
    default=GRACE_PERIOD,
    show_default=True,
    help="seconds without a heartbeat after which another machine's trial counts as lost",
)
@click.option(
    "--devices",
    help="train each trial data-parallel on several devices: a count (4: cuda:0-3, or 4 gloo "
    "processes with device: cpu) or GPU indices (0,1,2,3: pins them with CUDA_VISIBLE_DEVICES); "
    "overrides training.devices",
)
@click.option(
    "--max-failures-in-a-row",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="stop this worker (exit 1) after this many failed trials in a row; 0: never",
)
def worker(
    study: Path,
    storage: str | None,
    out_dir: Path | None,
    n_trials: int | None,
    timeout: float | None,
    artifacts: str | None,
    plugin_files: tuple[Path, ...],
    threads: int | None,
    verbose: bool,
    heartbeat_interval: int,
    grace_period: int,
    max_failures_in_a_row: int,
    devices: str | None,
) -> None:
    """Join the study STUDY (a study YAML file, or a study folder) and run trials until its budget is done.

    Start as many as you like, on any machines that reach the storage: the budget of finished
    trials holds across all of them, and a worker that dies has its trial retried by the others.
    Exits 0 when the study has a complete trial, 1 when it has none or this worker was stopped by
    the failure policy, 2 on a config or plugin error, 130 on Ctrl-C, 143 on SIGTERM.
    """
    import optuna

    from tlsearch import Study, Worker
    from tlsearch.errors import UsageError
    from tlsearch.search.signals import exit_code, stop_on_sigterm
    from tlsearch.study_api import worker_study_is_folder
    from tlsearch.worker_process import event_printer

    # A scheduler's SIGTERM stops like Ctrl-C: the running trial is requeued.
    click.get_current_context().call_on_close(stop_on_sigterm())

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet_noise(verbose=verbose)
    machine: dict[str, int] = {"threads": threads} if threads else {}  # this machine's settings
    if devices is not None:
        machine["devices"] = parse_devices(devices)
    try:
        is_folder = worker_study_is_folder(study, artifacts=artifacts)
    except UsageError as exc:
        raise click.BadParameter(str(exc), param_hint="'STUDY'") from None
    if is_folder:
        opened = Study.from_dir(
            study, out=out_dir, storage=storage, plugin_files=plugin_files, artifacts=artifacts
        )
        if machine:  # the folder's config, with this machine's threads and devices
            training = opened.config.training.model_copy(update=machine)
            config = opened.config.model_copy(update={"training": training})
            opened = Study(
                study,
                config=config,
                out=opened.out,
                storage=storage,
                plugin_files=plugin_files,
                artifacts=artifacts,
            )
    else:
        overrides = {f"training.{key}": value for key, value in machine.items()} or None
        opened = Study.from_yaml(
            study,
            out=out_dir,
            storage=storage,
            plugin_files=plugin_files,
            overrides=overrides,
            artifacts=artifacts,
        )
    settings = WorkerSettings(
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        max_failures_in_a_row=max_failures_in_a_row or None,
    )
    rank = os.environ.get("TLSEARCH_WORKER_RANK")
    try:
        result = Worker(opened, settings=settings).run(
            n_trials=n_trials,
            timeout=timeout,
            on_event=event_printer(f"[worker {rank or os.getpid()}] ", echo=click.echo),
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


def parse_devices(value: str) -> int:
    """``--devices``: a count, or comma-separated GPU indices, which then become this process's
    ``CUDA_VISIBLE_DEVICES`` (set before torch initialises CUDA); returns the device count."""
    text = value.strip()
    parts = [p.strip() for p in text.split(",")]
    if "," not in text and text.isdigit() and int(text) >= 1:
        return int(text)
    if len(parts) >= 1 and all(p.isdigit() for p in parts) and len(set(parts)) == len(parts) and "," in text:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(parts)
        return len(parts)
    raise click.BadParameter(
        f"{value!r} is neither a device count (e.g. 4) nor distinct GPU indices (e.g. 0,1,2,3)",
        param_hint="--devices",
    )
