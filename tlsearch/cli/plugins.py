"""``tlsearch plugins``: what is installed and where it came from."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tlsearch.cli import main
from tlsearch.cli.options import plugin_option
from tlsearch.kinds import KINDS


@main.group()
def plugins() -> None:
    """List plugins and hooks."""


@plugins.command("list")
@click.option("--kind", type=click.Choice(sorted(KINDS)), help="only plugins of this kind")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@plugin_option
def list_plugins(kind: str | None, as_json: bool, plugin_files: tuple[Path, ...]) -> None:
    """Every registered plugin: name, kind, provider package and version, hyperparameters."""
    from tlsearch.registry import get_plugin_manager

    pm = get_plugin_manager(plugin_files)
    infos = [p for p in pm.registry if kind is None or p.kind == kind]
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in infos], indent=2))
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
    for failure in pm.failures:
        click.echo(f"\nnot loaded: {failure.source}: {failure.error}", err=True)


@plugins.command("hooks")
def list_hooks() -> None:
    """The hooks a plugin can implement, with their documentation."""
    import inspect

    from tlsearch import hookspecs

    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("tlsearch_"):
            click.echo(f"{name}{inspect.signature(fn)}\n    {inspect.getdoc(fn)}\n")
