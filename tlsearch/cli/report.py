"""``tlsearch report``: one self-contained HTML file with the study's plots and tables."""

from __future__ import annotations

from pathlib import Path

import click

from tlsearch.cli import main
from tlsearch.cli.options import artifacts_option


@main.command(short_help="Write a study's offline HTML report.")
@click.argument("source")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="HTML file (default: DIR/report.html)",
)
@click.option("--png", is_flag=True, help="also save every plot as PNG in <report>_plots/ beside the report")
@click.option("--study", "study_name", help="study name, for a storage URL holding several studies")
@click.option("--storage", help="Optuna storage URL overriding the study folder's own")
@artifacts_option
def report(
    source: str,
    out_path: Path | None,
    png: bool,
    study_name: str | None,
    storage: str | None,
    artifacts: str | None,
) -> None:
    """Write the report of the study in SOURCE (a study folder, or an Optuna storage URL): optimisation
    history, learning curves, plugins compared, importances, accuracy vs cost, leaderboard, per-class
    results (confusion, worst images), exported model.
    The HTML needs no network: plots are inline SVG."""
    from tlsearch import Study

    opened = Study.open(source, study_name=study_name, storage=storage, artifacts=artifacts)
    files = opened.report(out=out_path, png=png)
    click.echo(f"wrote {files.html}")
    for plot in files.plots:
        if plot.figure is None:
            click.echo(f"  no {plot.title.lower()}: {plot.note}")
    if files.pngs:
        click.echo(f"wrote {len(files.pngs)} PNG file(s) to {files.pngs[0].parent}")
