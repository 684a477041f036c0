"""``tlsearch run``: run or resume a study, then export its best model.

Exit codes (the README's table): 0 the study has a complete trial (and it was exported); 1 the
run failed — no complete trial, the failure policy stopped it (a failure every trial would meet,
or too many in a row), a worker failed, or an export check failed; 2 a config or plugin error,
before any work; 130 Ctrl-C; 143 SIGTERM. After 130 and 143 the running trial was failed and
queued again, so rerunning the same command resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from tlsearch.cli import main
from tlsearch.cli.console import Console, console_option
from tlsearch.cli.noise import quiet_noise, verbose_option
from tlsearch.cli.options import artifacts_option, plugin_option, threads_option
from tlsearch.study_api import Study  # light: it imports the search when a method runs


def best_trial_warning(study: Any) -> str | None:
    """The baseline warning (:mod:`tlsearch.search.baseline`) for the study's best trial, if any."""
    from tlsearch.report import leaderboard
    from tlsearch.search.baseline import study_baseline_warning

    rows = leaderboard(study, top=1)
    return study_baseline_warning(study, rows[0]["metrics"]) if rows else None


@main.command(short_help="Run or resume a study, then export its best model.")
@click.argument("study", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="study folder (default: runs/<study name>); rerunning with the same folder resumes",
)
@click.option(
    "--n-trials", type=click.IntRange(min=1), help="total budget of finished trials (overrides the study)"
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="seconds for this run (overrides the study)",
)
@click.option(
    "--storage",
    help="Optuna storage: a URL (postgresql://…, shared by workers on several machines) "
    "or a .journal file; default: study.journal in the study folder",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="local worker processes: one per visible GPU (pinned with CUDA_VISIBLE_DEVICES), or CPU processes; "
    "0 creates the study (checked, ranked, warm start queued) and runs no trial, for `tlsearch worker`s to join",
)
@artifacts_option
@plugin_option
@threads_option
@verbose_option
@click.option("--no-export", is_flag=True, help="skip exporting the best model")
@click.option(
    "--force",
    "force_export",
    is_flag=True,
    help="export the best model even when the exported one is already from it",
)
@console_option
def run(
    study: Path,
    out_dir: Path | None,
    n_trials: int | None,
    timeout: float | None,
    storage: str | None,
    workers: int,
    artifacts: str | None,
    plugin_files: tuple[Path, ...],
    threads: int | None,
    verbose: bool,
    no_export: bool,
    force_export: bool,
    console_mode: str,
) -> None:
    """Search the STUDY file's space with Optuna; every trial fine-tunes a model for real."""
    import optuna

    from tlsearch.search import finished_trials
    from tlsearch.search.signals import exit_code, stop_on_sigterm

    # A scheduler's SIGTERM stops like Ctrl-C: the running trial is requeued.
    click.get_current_context().call_on_close(stop_on_sigterm())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet_noise(verbose=verbose)  # the console prints its own lines
    overrides = {"training.threads": threads} if threads else None
    api = Study.from_yaml(
        study,
        out=out_dir,
        storage=storage,
        plugin_files=plugin_files,
        overrides=overrides,
        artifacts=artifacts,
    )
    budget = n_trials if n_trials is not None else api.config.search.n_trials
    try:
        with Console(total=budget, epochs=api.config.training.epochs, mode=console_mode) as console:
            result = api.run(
                workers=workers,
                n_trials=n_trials,
                timeout=timeout,
                progress=False,
                on_event=console.event,
                export=False,  # below, with the console's spinners
            )
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (tlsearch.search.signals.Terminated)
        code = exit_code(exc)
        cause = "terminated (SIGTERM)" if code != 130 else "interrupted"
        click.echo(
            f"{cause}: finished trials are kept and the running one was requeued; "
            "rerun the same command to resume",
            err=True,
        )
        sys.exit(code)
    if workers == 0:
        from tlsearch.search.storage import redact

        where = redact(storage) if storage else str(result.study_dir.root)
        queued = len(result.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
        click.echo(
            f"study {result.config.name!r} is ready in {where} ({queued} trial(s) queued); "
            "start `tlsearch worker` processes to run it"
        )
        return
    console.leaderboard(result.study, metric=result.config.metric)
    warning = best_trial_warning(result.study)
    if warning:
        click.echo(warning)
    if workers > 1:
        click.echo(f"workers' own output: {result.study_dir.root / 'logs'}/worker-<rank>.log")
    problem = result.problem()
    if problem:
        click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    finished = finished_trials(result.study)
    if budget is not None and finished >= budget and not console.seeded:  # no trial ran here
        click.echo(
            f"the budget of {budget} finished trials is done ({finished} finished); nothing more to run"
        )
    if result.config.export.enabled and not no_export:
        _export(api, result, console, force=force_export)


def _export(api: Study, result: Any, console: Console, *, force: bool) -> None:
    """What :meth:`tlsearch.Study.export_best` does, one step at a time with the console's lines."""
    current = None if force else api.exported_best()
    if current is not None:
        click.echo(
            f"{current} is already the best trial's model; not exported again "
            "(--force, or `tlsearch export`, exports anyway)"
        )
        return
    with console.working("exporting the best trial to ONNX (with its parity check)"):
        report = api.export(pm=result.pm)
    console.exported(report)
    from tlsearch.report._status import export_lines  # the test score and the soup, if any

    for line in export_lines(result.study.user_attrs.get("export"), metric=result.config.metric):
        click.echo(line)
    if api.wants_int8:
        from tlsearch.cli.export import describe_quantization

        with console.working("quantising the model to INT8 (and measuring its accuracy)"):
            quantized = api.quantize(model=report.path)
        click.echo(describe_quantization(quantized))
