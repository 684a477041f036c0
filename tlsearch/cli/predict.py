"""``tlsearch predict``: run an exported model on image files and folders (no torch needed)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tlsearch.cli import main

if TYPE_CHECKING:
    from tlsearch.deploy import Prediction


class ModelSource(click.ParamType):
    """A local model file (``file:///…`` too), or an object-store URL kept as given (fetched later)."""

    name = "model"
    _local = click.Path(exists=True, dir_okay=False, path_type=Path)

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        from tlsearch.deploy._remote import is_remote, local_path

        if isinstance(value, str) and is_remote(value):
            return value
        return self._local.convert(str(local_path(str(value))), param, ctx)


@main.command(short_help="Predict with an exported model (onnxruntime only).")
@click.argument("model", type=ModelSource())
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--top-k",
    "top_k",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="classes per image (multilabel: the most probable labels, beside the label set)",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON array of results on stdout")
@click.option("--csv", "as_csv", is_flag=True, help="CSV rows on stdout (not with --json)")
@click.option(
    "--batch-size",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="images per onnxruntime call",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="where a model from an object store is kept (default: $TLSEARCH_MODEL_CACHE, else "
    "$XDG_CACHE_HOME/tlsearch/models or ~/.cache/tlsearch/models)",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="progress bar on stderr (default: with many files, on a terminal)",
)
def predict(
    model: Path | str,
    paths: tuple[Path, ...],
    top_k: int,
    as_json: bool,
    as_csv: bool,
    batch_size: int,
    cache_dir: Path | None,
    progress: bool | None,
) -> None:
    """Predict MODEL.onnx (exported by tlsearch) on image files and folders (recursive).

    MODEL may be the model's URL in the study's artefact store (s3://bucket/prefix/model.onnx,
    gs://…; a URL without a .onnx name means its model.onnx): it is downloaded once into a local
    cache, and again only when the store's copy changed.

    Unreadable files are reported one by one (on stderr, and in the JSON/CSV rows) while the others
    are still predicted; the exit code is 1 if any failed.
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv do not go together: choose one output format")
    from tlsearch.deploy import Predictor, collect_images

    files = collect_images(paths)
    if not files:
        raise click.UsageError(f"no image files found in {', '.join(map(str, paths))}")
    predictor = Predictor(model, cache_dir=cache_dir)  # a store's model is fetched once the images are known
    show = show_progress(progress, files=len(files), batch_size=batch_size, stream=sys.stderr)
    from tqdm import tqdm

    with tqdm(total=len(files), file=sys.stderr, disable=not show, unit="image") as bar:
        results = predictor.predict(files, top_k=top_k, batch_size=batch_size, on_progress=bar.update)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    elif as_csv:
        if predictor.task == "multilabel":
            _write_label_sets_csv(results)
        else:
            _write_csv(results, classification=predictor.task == "classification")
    else:
        for r in results:
            if r.ok:
                click.echo(f"{r.source}\t{_text(r)}")
    failed = [r for r in results if not r.ok]
    for r in failed:
        click.echo(f"error: {r.source}: {r.error}", err=True)
    if failed:
        click.echo(f"{len(failed)} of {len(results)} file(s) could not be predicted", err=True)
        sys.exit(1)


def _text(result: Prediction) -> str:
    if result.labels is not None:  # multilabel: the label set at the model's thresholds
        return ", ".join(f"{label} {p:.3f}" for label, _, p in result.labels) or "(no label)"
    if result.top_k:
        return ", ".join(f"{label} {p:.3f}" for label, _, p in result.top_k)
    return ", ".join(f"{n}={v:.6g}" for n, v in zip(result.names, result.values, strict=True))


def show_progress(requested: bool | None, *, files: int, batch_size: int, stream: object) -> bool:
    """Whether to draw the progress bar: as asked, else with more than one batch of files on a
    terminal (a bar's carriage returns are noise in a log file or a pipe)."""
    if requested is not None:
        return requested
    isatty = getattr(stream, "isatty", None)
    return files > batch_size and bool(isatty and isatty())


def _write_label_sets_csv(results: Sequence[Prediction]) -> None:
    """Multilabel: one row per predicted label (a row with an empty label for an empty set)."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["path", "label", "index", "probability", "error"])
    for r in results:
        if not r.ok:
            writer.writerow([r.source, "", "", "", r.error])
        elif not r.labels:
            writer.writerow([r.source, "", "", "", ""])
        for label, index, p in r.labels or []:
            writer.writerow([r.source, label, index, f"{p:.6f}", ""])


def _write_csv(results: Sequence[Prediction], *, classification: bool) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    if classification:
        writer.writerow(["path", "rank", "label", "index", "probability", "error"])
        for r in results:
            if not r.ok:
                writer.writerow([r.source, "", "", "", "", r.error])
            for rank, (label, index, p) in enumerate(r.top_k, 1):
                writer.writerow([r.source, rank, label, index, f"{p:.6f}", ""])
    else:
        writer.writerow(["path", "output", "value", "error"])
        for r in results:
            if not r.ok:
                writer.writerow([r.source, "", "", r.error])
            for name, value in zip(r.names, r.values, strict=True):
                writer.writerow([r.source, name, repr(value), ""])
