"""``tlsearch status``: where a study stands (trials by state, best trial, time spent and left)."""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import Path

import click

from tlsearch.cli import main
from tlsearch.cli.console import Console, console_option
from tlsearch.cli.options import artifacts_option


@main.command(short_help="Show a study: trials, best trial, leaderboard.")
@click.argument("source")
@click.option("--study", "study_name", help="study name, for a storage URL holding several studies")
@click.option("--storage", help="Optuna storage URL overriding the study folder's own")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="with a STUDY.yaml: the folder it ran in (default: runs/<study name>, as for `tlsearch run`)",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="trials in the leaderboard",
)
@artifacts_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option(
    "--watch",
    is_flag=True,
    help="follow the study live, as `tlsearch run` shows it, until its budget is done (or Ctrl-C)",
)
@console_option
def status(
    source: str,
    study_name: str | None,
    storage: str | None,
    out_dir: Path | None,
    top: int,
    artifacts: str | None,
    as_json: bool,
    watch: bool,
    console_mode: str,
) -> None:
    """Show the study in SOURCE: a study folder (runs/<name>), the study file it ran from
    (STUDY.yaml, as `tlsearch run` takes it), or an Optuna storage URL (sqlite:///…,
    postgresql://…) with --study NAME: trials by state, time, the best trial and the leaderboard.

    With --watch, follow it from any machine that reaches its storage: the trials of every worker
    as they start, train and end, and the leaderboard; then the summary.
    """
    from tlsearch import Study
    from tlsearch.report import format_status

    opened = Study.open(source, study_name=study_name, storage=storage, out=out_dir, artifacts=artifacts)
    src = opened.load()
    if watch:
        if as_json:
            raise click.UsageError("--watch and --json do not go together; use --json alone for scripts")
        with Console(total=src.budget, mode=console_mode) as console, suppress(KeyboardInterrupt):
            opened.watch(console.event, source=src)  # Ctrl-C stops the watch, nothing else
        click.echo("")
    summary = opened.status(top=top, source=src)
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else format_status(summary))
