"""``tlsearch --help`` lists every command with its whole one-line summary: click cuts a long first
sentence of the docstring to "…" in that list, so each command gives a short ``short_help``."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tlsearch.cli import COMMANDS, main


def _listed(args: list[str]) -> dict[str, str]:
    result = CliRunner().invoke(main, args, terminal_width=80)
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:\n", 1)[1].splitlines()
    return {line.split()[0]: line for line in listed if line.strip()}


@pytest.mark.parametrize(
    ("args", "commands"), [(["--help"], set(COMMANDS)), (["plugins", "--help"], {"list", "hooks"})]
)
def test_every_command_has_a_summary_that_the_help_list_shows_whole(
    args: list[str], commands: set[str]
) -> None:
    rows = _listed(args)
    assert set(rows) == commands
    cut = [row.strip() for row in rows.values() if row.rstrip().endswith("...")]
    assert not cut, f"summaries cut short in `tlsearch --help`: {cut}"
