"""Stopping cleanly on a signal: SIGTERM (a scheduler's stop, ``kill``) ends a run like Ctrl-C does.

Python turns SIGINT into :class:`KeyboardInterrupt`, and the objective answers that by failing the
running trial with ``failure_kind`` ``interrupted`` and queueing its parameters again, so that a
rerun retries them. SIGTERM gets the same treatment through :class:`Terminated`, a
``KeyboardInterrupt`` that remembers which signal it was, so the command can exit with the shell's
convention, 128 + the signal number (143 for SIGTERM, 130 for SIGINT).

Only the first signal interrupts: a second one, arriving while the interrupted trial is being
recorded and requeued (a scheduler that repeats its SIGTERM, or a Ctrl-C on top of it), is ignored
so that the bookkeeping finishes. A process that must die at once can still be sent SIGKILL; its
trial is then swept on the next start (:mod:`tlsearch.search.recovery`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
EXIT_SIGINT = 128 + signal.SIGINT  # 130


class Terminated(KeyboardInterrupt):
    """The process received ``signum`` (SIGTERM) and stops as it would on Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """143 for SIGTERM, 130 for Ctrl-C (a plain ``KeyboardInterrupt``)."""
    return interrupt.exit_code if isinstance(interrupt, Terminated) else EXIT_SIGINT


def stop_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM raise :class:`Terminated` in the main thread, once; later SIGTERMs and SIGINTs
    are ignored while the first one unwinds. Returns a function that puts the previous handlers
    back (for a command run inside another program, e.g. click's test runner). A no-op outside the
    main thread (where Python cannot install signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stop is under way; let it finish
        raise Terminated(signum)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])

    signal.signal(signal.SIGTERM, handler)
    return restore
