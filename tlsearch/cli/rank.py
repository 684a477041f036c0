"""``tlsearch rank``: the study's candidate backbones ranked by a zero-cost transferability score."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from tlsearch.cli import main
from tlsearch.cli.options import plugin_option


@main.command(short_help="Rank the candidate backbones by transferability.")
@click.argument("study", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--score",
    type=click.Choice(["logme", "hscore"]),
    help="score to rank by (default: the study's, else logme)",
)
@click.option("--max-images", type=click.IntRange(min=8), help="score on at most this many training images")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="study folder whose feature cache to use (default: runs/<study name>)",
)
@plugin_option
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def rank(
    study: Path,
    score: str | None,
    max_images: int | None,
    out_dir: Path | None,
    plugin_files: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Rank the STUDY file's backbones by transferability of their frozen features, with their cost.

    One forward pass per backbone over the training split (features are kept in the study's
    cache, so a run afterwards reuses them). Scores order and prune candidates; they never decide
    alone: no score is reliable on every dataset (see docs/smarter-search.md)."""
    from tlsearch import Study

    ranked = Study.from_yaml(study, out=out_dir, plugin_files=plugin_files).rank(
        score=score,
        max_images=max_images,
        on_candidate=None
        if as_json
        else lambda r: click.echo(f"  scored {r.label} in {r.seconds:.1f} s", err=True),
    )
    score, ranking = ranked.score, ranked.results
    if as_json:
        click.echo(json.dumps(ranked.to_dicts(), indent=2, default=str))
        return
    click.echo(f"{'#':>2}  {'backbone':<32} {score:>9}  {'params':>8}  {'GFLOPs':>7}  {'fwd ms':>7}  images")
    for i, r in enumerate(ranking, 1):
        if r.error:
            click.echo(f"{i:>2}  {r.label:<32} {'—':>9}  failed: {r.error}")
            continue
        params = f"{r.num_params / 1e6:.2f}M" if r.num_params else "?"
        gflops = f"{r.gflops:.3f}" if r.gflops is not None and math.isfinite(r.gflops) else "?"
        fwd = f"{r.forward_ms:.1f}" if r.forward_ms is not None else "?"
        click.echo(f"{i:>2}  {r.label:<32} {r.score:>9.4f}  {params:>8}  {gflops:>7}  {fwd:>7}  {r.images}")
    click.echo(
        "\nHigher is better. A score orders and prunes candidates; it is not a verdict (docs/smarter-search.md)."
    )
