"""``tlsearch run``: run or resume a study, then export its best model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tlsearch.cli import main
from tlsearch.cli.console import Console, console_option


@main.command()
@click.argument("study", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="study folder (default: runs/<study name>); rerunning with the same folder resumes")
@click.option("--n-trials", type=click.IntRange(min=1), help="total budget of finished trials (overrides the study)")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="seconds for this run (overrides the study)")
@click.option("--storage", help="Optuna storage URL (e.g. postgresql://…); default: SQLite in the study folder")
@click.option("--plugin", "plugin_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="a plugin file to load (repeatable)")
@click.option("--no-export", is_flag=True, help="skip exporting the best model")
@console_option
def run(study: Path, out_dir: Path | None, n_trials: int | None, timeout: float | None, storage: str | None,
        plugin_files: tuple[Path, ...], no_export: bool, console_mode: str) -> None:
    """Search the STUDY file's space with Optuna; every trial fine-tunes a model for real."""
    import optuna

    from tlsearch.config import load_config
    from tlsearch.search import export_study, run_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the console prints its own lines
    config = load_config(study)
    budget = n_trials if n_trials is not None else config.search.n_trials
    with Console(total=budget, epochs=config.training.epochs, mode=console_mode) as console:
        result = run_study(config, out_dir=out_dir, n_trials=n_trials, timeout=timeout, storage=storage,
                           plugin_files=plugin_files, progress=False, on_event=console.event)
    console.leaderboard(result.study, metric=result.config.metric)
    if result.config.export.enabled and not no_export:
        report: Any = export_study(result.study_dir.root, storage=storage, pm=result.pm)
        console.exported(report)
