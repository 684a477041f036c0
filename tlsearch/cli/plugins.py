"""``tlsearch plugins``: what is installed and where it came from."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tlsearch.cli import main
from tlsearch.cli.options import KIND_NAMES, plugin_option


@main.group()
def plugins() -> None:
    """List plugins and hooks."""


@plugins.command("list", short_help="Every plugin: kind, provider, hyperparameters.")
@click.option("--kind", type=click.Choice(KIND_NAMES), help="only plugins of this kind")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@plugin_option
def list_plugins(kind: str | None, as_json: bool, plugin_files: tuple[Path, ...]) -> None:
    """Every registered plugin: name, kind, provider package and version, hyperparameters; and the
    broken third-party plugins that were skipped, with the reason (`"status": "broken"` in JSON)."""
    import warnings

    from tlsearch.registry import get_plugin_manager

    with warnings.catch_warnings():  # listed below, with the reason, instead
        warnings.simplefilter("ignore")
        pm = get_plugin_manager(plugin_files)
    infos = [p for p in pm.registry if kind is None or p.kind == kind]
    if as_json:
        listed = [{**p.to_dict(), "status": "ok"} for p in infos]
        click.echo(json.dumps(listed + [f.to_dict() for f in pm.failures], indent=2))
        return
    current = None
    for info in infos:
        if info.kind != current:
            current = info.kind
            click.echo(f"\n{current}:")
        d = info.to_dict()
        provider = f"{d['provider']} {d['version'] or ''}".strip()
        click.echo(f"  {info.name:<24} [{provider}] {d['summary']}")
        for name, desc in d["hyperparameters"].items():
            click.echo(f"      {name}: {desc}")
    if pm.failures:
        click.echo("\nbroken (skipped):")
    for failure in pm.failures:
        click.echo(f"  {failure.source}: {failure.error}")


@plugins.command("hooks")
def list_hooks() -> None:
    """The hooks a plugin can implement, with their documentation."""
    import inspect

    from tlsearch import hookspecs

    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("tlsearch_"):
            click.echo(f"{name}{inspect.signature(fn)}\n    {inspect.getdoc(fn)}\n")
