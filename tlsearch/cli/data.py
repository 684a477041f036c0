"""``tlsearch demo-data``: write the built-in shapes image set (no download)."""

from __future__ import annotations

from pathlib import Path

import click

from tlsearch.cli import main


@main.command("demo-data", short_help="Write a built-in demo image set (no download).")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-class", default=80, show_default=True, help="training images per class")
@click.option("--val-per-class", default=20, show_default=True, help="validation images per class")
@click.option("--size", default=64, show_default=True, help="image side in pixels")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--task",
    type=click.Choice(["classification", "regression", "multilabel"]),
    default="classification",
    show_default=True,
    help="regression: FOLDER/labels.csv with each shape's size as target; multilabel: "
    "FOLDER/labels.csv (path,labels) of images with several shapes each",
)
def demo_data(folder: Path, per_class: int, val_per_class: int, size: int, seed: int, task: str) -> None:
    """Write FOLDER/train/<class>/ and FOLDER/val/<class>/ with images of four shapes
    (or, with --task regression or multilabel, FOLDER/images/ and FOLDER/labels.csv)."""
    from tlsearch.demo import make_multilabel_shapes, make_shapes, make_sizes

    if task == "multilabel":
        csv = make_multilabel_shapes(folder, n=(per_class + val_per_class) * 2, size=size, seed=seed)
        click.echo(f"wrote {csv}")
        return
    if task == "regression":
        csv = make_sizes(folder, n=(per_class + val_per_class) * 2, size=size, seed=seed)
        click.echo(f"wrote {csv}")
        return
    make_shapes(folder, per_class=per_class, val_per_class=val_per_class, size=size, seed=seed)
    click.echo(f"wrote {folder}/train and {folder}/val")
