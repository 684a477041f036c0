"""``--verbose``: Optuna's and Python's own output in full; without it, one line per failure
(:func:`tlsearch.noise.quiet_noise`)."""

from __future__ import annotations

import click

from tlsearch.noise import one_line_warnings, quiet_noise

__all__ = ["one_line_warnings", "quiet_noise", "verbose_option"]

verbose_option = click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Optuna's warnings and tracebacks for failed trials, and Python's warnings in full "
    "(default: one line per failure; the traceback is kept in the trial and the trail)",
)
