"""``tlsearch export``: a study's best (or a chosen) trial to a verified ONNX model."""

from __future__ import annotations

from pathlib import Path

import click

from tlsearch.cli import main


@main.command()
@click.argument("study_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="model file (default: DIR/model.onnx)",
)
@click.option("--trial", type=int, help="trial number (default: the best)")
@click.option(
    "--storage", help="Optuna storage URL, when the study is not in the folder's own storage (study.journal)"
)
def export(study_dir: Path, out_path: Path | None, trial: int | None, storage: str | None) -> None:
    """Export a trial of the study in STUDY_DIR to ONNX, checked against PyTorch with onnxruntime."""
    from tlsearch.search import export_study

    report = export_study(study_dir, trial=trial, path=out_path, storage=storage)
    click.echo(f"exported {report.path} (onnxruntime parity: max abs diff {report.max_abs_diff:.2e})")
