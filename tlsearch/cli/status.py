"""``tlsearch status``: where a study stands (trials by state, best trial, time spent and left)."""

from __future__ import annotations

import json

import click

from tlsearch.cli import main


@main.command()
@click.argument("source")
@click.option("--study", "study_name", help="study name, for a storage URL holding several studies")
@click.option("--storage", help="Optuna storage URL overriding the study folder's own")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(source: str, study_name: str | None, storage: str | None, as_json: bool) -> None:
    """Show the study in SOURCE: a study folder (runs/<name>) or an Optuna storage URL
    (sqlite:///…, postgresql://…) with --study NAME."""
    from tlsearch.report import format_status, study_status

    summary = study_status(source, study_name=study_name, storage=storage)
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else format_status(summary))
