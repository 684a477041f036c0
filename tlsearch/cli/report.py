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
    type=click.Path(path_type=Path),
    help="the HTML file (default: report.html in the study folder); with a STUDY.yaml, a path not "
    "ending in .html is the folder it ran in, as for `run` and `status` (the report then DIR/report.html)",
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
    """Write the report of the study in SOURCE: a study folder (runs/<name>), the study file it ran
    from (STUDY.yaml [--out DIR], as `tlsearch run` and `tlsearch status` take it), or an Optuna
    storage URL: optimisation history, learning curves, plugins compared, importances, accuracy vs
    cost, leaderboard, per-class results (confusion, worst images), exported model.
    The HTML needs no network: plots are inline SVG."""
    from tlsearch import Study

    study_dir, html = report_paths(source, out_path)
    if html is not None and html.is_dir():
        raise click.BadParameter(
            f"{str(html)!r} is a folder; --out is the HTML file here (a folder only with a STUDY.yaml "
            "SOURCE: the folder it ran in)",
            param_hint="'--out'",
        )
    opened = Study.open(source, study_name=study_name, storage=storage, out=study_dir, artifacts=artifacts)
    files = opened.report(out=html, png=png)
    click.echo(f"wrote {files.html}")
    for plot in files.plots:
        if plot.figure is None:
            click.echo(f"  no {plot.title.lower()}: {plot.note}")
    if files.pngs:
        click.echo(f"wrote {len(files.pngs)} PNG file(s) to {files.pngs[0].parent}")


HTML_SUFFIXES = (".html", ".htm")


def report_paths(source: str, out: Path | None) -> tuple[Path | None, Path | None]:
    """``(study folder, HTML file)`` that ``--out`` names: with a study file as SOURCE and a path
    not ending in ``.html``, the folder the study ran in (``tlsearch run STUDY.yaml --out DIR``'s,
    as ``tlsearch status`` takes it); otherwise the HTML file, as before."""
    from tlsearch.report._source import STUDY_FILE_SUFFIXES

    is_study_file = Path(source).suffix.lower() in STUDY_FILE_SUFFIXES
    if out is not None and is_study_file and out.suffix.lower() not in HTML_SUFFIXES:
        return out, None
    return None, out
