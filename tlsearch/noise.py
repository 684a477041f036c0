"""Keeping the console to one line per failure.

Optuna logs a warning with the full traceback for every failed trial (and for Ctrl-C), and
Python prints each warning as two lines with its source line: for one bad image that was ~90
lines around the one line the console prints itself. Without ``--verbose``, :func:`quiet_noise`

* drops Optuna's ``Trial N failed …`` warnings: the console's ``trial N fail … <reason>`` line
  says the same, and the traceback stays in the trial (its ``failure_traceback`` user attribute)
  and in the trail, ``trail.jsonl``;
* prints each warning as one line, ``warning: <message> (<category>)``, once per message.

With ``--verbose`` both are as Optuna and Python print them. The CLI's ``--verbose`` option is in
:mod:`tlsearch.cli.noise`; worker processes (:mod:`tlsearch.worker_process`) use this too.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any, TextIO

_TRIAL_FAILED = re.compile(r"^Trial \d+ failed\b")
#: the loggers Optuna writes its per-trial failure warnings to (the optimize loop's)
_OPTUNA_TRIAL_LOGGERS = ("optuna.study._optimize",)


class _DropTrialFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _TRIAL_FAILED.match(str(record.msg))


_FILTER = _DropTrialFailures()


def one_line_warnings(stream: TextIO | None = None) -> Callable[..., None]:
    """A :func:`warnings.showwarning` that prints ``warning: <message> (<category>)`` once per message."""
    seen: set[str] = set()

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        text = " ".join(str(message).split())
        if text in seen:
            return
        seen.add(text)
        out = stream or sys.stderr
        out.write(f"warning: {text} ({category.__name__})\n")
        out.flush()

    return show


def quiet_noise(*, verbose: bool = False) -> None:
    """One line per failure (see the module docstring); ``verbose`` restores Optuna's and
    Python's own output."""
    for name in _OPTUNA_TRIAL_LOGGERS:
        logger = logging.getLogger(name)
        if verbose:
            logger.removeFilter(_FILTER)
        elif _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    if verbose:
        warnings.showwarning = warnings._showwarning_orig  # type: ignore[attr-defined]
    else:
        warnings.showwarning = one_line_warnings()
