"""The command line, thin over the Python API: every command calls one public function.

One module per command (group); each adds its commands to :data:`main`. Modules load lazily, when
their command runs, so ``tlsearch predict`` starts without importing torch (the deploy path must
work where torch is absent) and ``--help`` stays fast. Errors tlsearch raises on purpose print
their message (no traceback) and exit with their code: 2 for a bad config or plugin, 1 otherwise.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from tlsearch import __version__
from tlsearch.errors import TlsearchError, disk_full_error

#: command name → module of tlsearch.cli that defines it
COMMANDS = {
    "run": "run",
    "worker": "worker",
    "status": "status",
    "report": "report",
    "export": "export",
    "predict": "predict",
    "plugins": "plugins",
    "rank": "rank",
    "storage-proxy": "proxy",
    "demo-data": "data",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"tlsearch.cli.{COMMANDS[cmd_name]}")
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TlsearchError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:  # a full disk met outside tlsearch's own writes (SQLite, a library)
            error = disk_full_error(exc)
            if error is None:
                raise
            click.echo(f"error: {error}", err=True)
            sys.exit(error.exit_code)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tlsearch")
def main() -> None:
    """tlsearch: search over transfer-learning plugins with Optuna; export the winner to ONNX."""
