"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click

plugin_option = click.option(
    "--plugin",
    "plugin_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="a plugin file to load (repeatable)",
)
