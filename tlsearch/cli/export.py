"""``tlsearch export``: a study's best (or a chosen) trial to a verified ONNX model, optionally INT8."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tlsearch.cli import main
from tlsearch.cli.options import artifacts_option


def describe_quantization(report: Any) -> str:
    """One line on an INT8 copy: size, accuracy against fp32, latency."""
    return (
        f"INT8 {report.path}: {report.size_bytes / 1e6:.1f} MB (fp32 {report.fp32_size_bytes / 1e6:.1f} MB), "
        f"{getattr(report, 'metric', 'accuracy')} {report.accuracy_int8:.2%} vs fp32 {report.accuracy_fp32:.2%} "
        f"({report.accuracy_drop * 100:.2f} pp drop), batch-1 latency {report.latency_ms_int8:.2f} ms "
        f"vs {report.latency_ms_fp32:.2f} ms"
    )


@main.command(short_help="Export a trial to a verified ONNX model.")
@click.argument("study_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="model file (default: DIR/model.onnx)",
)
@click.option(
    "--trial", type=int, help="a complete trial's number, as `tlsearch status` lists it (default: the best)"
)
@click.option(
    "--storage", help="Optuna storage URL, when the study is not in the folder's own storage (study.journal)"
)
@artifacts_option
@click.option(
    "--raw-input/--normalized-input",
    default=None,
    help="the model takes raw uint8 HWC images of any size and preprocesses them itself (default: the study's export.raw_input)",
)
@click.option(
    "--int8", is_flag=True, help="also write <stem>.int8.onnx, calibrated and measured on the study's images"
)
@click.option(
    "--on-accuracy-drop",
    type=click.Choice(["error", "warn"]),
    help="INT8 losing more than export.max_accuracy_drop: refuse (error) or keep it with a warning",
)
def export(
    study_dir: Path,
    out_path: Path | None,
    trial: int | None,
    storage: str | None,
    artifacts: str | None,
    raw_input: bool | None,
    int8: bool,
    on_accuracy_drop: str | None,
) -> None:
    """Export a trial of the study in STUDY_DIR to ONNX, checked against PyTorch with onnxruntime.

    From another machine: `tlsearch export DIR --storage URL --artifacts URL` with DIR empty or
    missing fetches the study and the trial's checkpoint from the artefact store, and uploads the model."""
    from tlsearch import Study
    from tlsearch.cli.console import Console

    if not study_dir.is_dir() and artifacts is None:
        raise click.BadParameter(
            f"directory {str(study_dir)!r} does not exist (it may be missing only with --artifacts, "
            "which the study is then fetched from)",
            param_hint="'STUDY_DIR'",
        )
    study = Study.from_dir(study_dir, storage=storage, artifacts=artifacts)
    if int8 and (study.config.export.raw_input if raw_input is None else raw_input):
        # refused before the export, not after it: INT8 quantises the plain (normalised-input) model
        raise click.UsageError(
            "--int8 quantises the plain model (normalised input); a raw-input model cannot be: "
            "export with --int8 alone (--normalized-input --int8 where the study sets export.raw_input), "
            "and the raw-input model in a second `tlsearch export DIR --raw-input --out FILE`"
        )
    console = Console()  # a spinner on a terminal, one line otherwise: an export takes a while
    what = "the best trial" if trial is None else f"trial {trial}"
    with console.working(f"exporting {what} to ONNX (with its parity check)"):
        report = study.export(trial=trial, path=out_path, raw_input=raw_input)
    click.echo(f"exported {report.path} (onnxruntime parity: max abs diff {report.max_abs_diff:.2e})")
    if int8:
        with console.working("quantising the model to INT8 (and measuring its accuracy)"):
            quantized = study.quantize(model=report.path, on_drop=on_accuracy_drop)
        click.echo(describe_quantization(quantized))
