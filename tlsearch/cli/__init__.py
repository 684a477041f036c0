"""The command line, thin over the Python API: every command calls one public function.

One module per command group (``run``, ``plugins``, ``export``, ``predict`` …); each adds its
commands to :data:`main`. Errors tlsearch raises on purpose print their message (no traceback)
and exit with their code: 2 for a bad config or plugin, 1 otherwise.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from tlsearch import __version__
from tlsearch.errors import TlsearchError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TlsearchError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tlsearch")
def main() -> None:
    """tlsearch: search over transfer-learning plugins with Optuna; export the winner to ONNX."""


def _load_commands() -> None:
    import importlib

    for module in ("run", "plugins", "export", "predict", "status", "report", "data"):
        try:
            importlib.import_module(f"tlsearch.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tlsearch.cli.{module}":
                raise


_load_commands()
