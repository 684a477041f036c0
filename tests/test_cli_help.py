"""``tlsearch --help`` lists every command with its whole one-line summary: click cuts a long first
sentence of the docstring to "…" in that list, so each command gives a short ``short_help``."""

from __future__ import annotations

from click.testing import CliRunner

from tlsearch.cli import COMMANDS, main


def test_every_command_has_a_summary_that_the_help_list_shows_whole() -> None:
    result = CliRunner().invoke(main, ["--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:\n", 1)[1].splitlines()
    rows = {line.split()[0]: line for line in listed if line.strip()}
    assert set(rows) == set(COMMANDS)
    cut = [row.strip() for row in rows.values() if row.rstrip().endswith("...")]
    assert not cut, f"summaries cut short in `tlsearch --help`: {cut}"
