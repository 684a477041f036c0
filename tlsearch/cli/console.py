"""What a running study shows: a live view on a terminal, plain lines everywhere else.

:class:`Console` receives the search's events (``on_event`` of :func:`tlsearch.search.run_study`:
``trial_start``, ``epoch_end``, ``trial_end``; with ``--workers N`` they are read from the study
that the worker processes run, see :mod:`tlsearch.search.watch`) and is reused by every command
that runs trials::

    with Console(total=budget) as console:
        run_study(path, on_event=console.event)
    console.leaderboard(study, metric="accuracy")

Two modes, chosen by :func:`choose_mode` unless given:

* ``live`` — rich's ``Live``: a trials bar (n/N finished, elapsed, time left from
  :func:`time_left`, or none where there is no honest figure), an epochs bar for the running trial with its plugins and current metric, and the
  top-5 leaderboard, redrawn in place.
* ``plain`` — one line per trial start, epoch and trial end, with no control character at all:
  safe for CI logs, files and pipes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Literal

import click

from tlsearch.eta import time_left

if TYPE_CHECKING:  # optuna and the search (torch) load when trials run, so `--help` stays fast
    import optuna

Mode = Literal["live", "plain"]
MODES = ("auto", "live", "plain")
ENV_VAR = "TLSEARCH_CONSOLE"


def choose_mode(
    requested: str = "auto", *, stream: IO[str] | None = None, environ: dict[str, str] | None = None
) -> Mode:
    """``live`` or ``plain``: what was asked (argument, else ``$TLSEARCH_CONSOLE``), else ``live``
    only on a terminal (``isatty``) whose ``TERM`` is not ``dumb``. ``NO_COLOR`` keeps the live
    view but without colours (rich honours it)."""
    env = os.environ if environ is None else environ
    if requested == "auto":
        requested = env.get(ENV_VAR, "auto").strip().lower() or "auto"
    if requested not in MODES:
        raise click.BadParameter(
            f"console mode {requested!r} is not valid; valid choices: {', '.join(MODES)}"
        )
    if requested != "auto":
        return requested  # type: ignore[return-value]
    out = stream if stream is not None else sys.stdout
    isatty = getattr(out, "isatty", None)
    on_terminal = bool(isatty and isatty())
    return "live" if on_terminal and env.get("TERM", "") != "dumb" else "plain"


def console_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--console auto|live|plain`` option, for every command that runs trials."""
    return click.option(
        "--console",
        "console_mode",
        type=click.Choice(MODES),
        default="auto",
        show_default=True,
        help=f"progress display: live view on a terminal, plain lines otherwise (also ${ENV_VAR})",
    )(fn)


@dataclass
class _Work:
    done: int
    total: int
    started: float
    quarter: int = 0  # the last quarter of the work a plain line was printed for


@dataclass
class _Row:
    number: int
    value: float
    summary: str
    cost: tuple[float, ...] = ()  # tlsearch.search.objectives.cost_key: ties go cheaper first


class Console:
    """Progress of the trials this process runs, or its local workers run (see the module docstring).

    ``total`` is the study's budget of finished trials (None: unknown, no ETA); ``epochs`` the
    epochs of one trial (for the epochs bar); ``stream`` where to write (default stdout). Use it as a context manager so the live view is closed, and the
    terminal restored, even when the run fails or is interrupted.
    """

    def __init__(
        self,
        *,
        total: int | None = None,
        epochs: int | None = None,
        mode: str = "auto",
        stream: IO[str] | None = None,
        top: int = 5,
    ) -> None:
        self.mode: Mode = choose_mode(mode, stream=stream)
        self.total = total
        self.epochs = epochs
        self.top = top
        self.stream = stream
        self.started = time.perf_counter()
        self.trial_started: dict[int, datetime] = {}  # from the trial's own record where it has one
        self.durations: list[float] = []
        self.seeded = False
        self.counted: set[int] = set()  # numbers of the finished trials: each counts once
        self.rows: list[_Row] = []
        self.maximize = True
        self.metric = "value"
        self.current: dict[int, dict[str, Any]] = {}
        self.work: dict[str, _Work] = {}  # work outside trials in progress (decoding, ranking), by task
        self._live: Any = None

    @property
    def live(self) -> bool:
        return self.mode == "live"

    # --- lifetime ---------------------------------------------------------------------------------

    def __enter__(self) -> Console:
        if self.live:
            from tlsearch.report._live import LiveView

            self._live = LiveView(self, stream=self.stream)
            self._live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live view (its last frame stays on screen); harmless when already closed."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _echo(self, text: str = "") -> None:
        click.echo(text, file=self.stream)

    # --- progress figures -------------------------------------------------------------------------

    @property
    def finished(self) -> int:
        return len(self.counted)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def eta(self) -> float | None:
        """Seconds until the budget is reached (:func:`time_left`), or None when unknown."""
        if self.total is None:
            return None
        now = datetime.now()
        running = [
            (
                (now - self.trial_started[n]).total_seconds() if n in self.trial_started else 0.0,
                int(state.get("epoch", 0)),
                state.get("epochs"),
            )
            for n, state in dict(self.current).items()
        ]
        return time_left(total=self.total, finished=self.finished, durations=self.durations, running=running)

    def leaders(self) -> list[_Row]:
        """The best ``top`` trials so far, in the final leaderboard's order (ties: the cheaper first)."""
        from tlsearch.search.objectives import order_by_score  # imports torch: only once trials run

        ranked = order_by_score(
            self.rows, score=lambda r: r.value, cost=lambda r: r.cost or (r.number,), maximize=self.maximize
        )
        return ranked[: self.top]

    # --- events -----------------------------------------------------------------------------------

    def event(self, name: str, **kw: Any) -> None:
        """Receive one search event (``trial_start``, ``epoch_end``, ``trial_end``, ``progress``)."""
        if name == "progress":
            self._progress(kw["task"], int(kw["done"]), int(kw["total"]))
            return
        trial = kw["trial"]
        if not self.seeded:
            self._seed(trial)
        if name == "trial_start":
            self.trial_started[trial.number] = getattr(trial, "datetime_start", None) or datetime.now()
            summary = _describe(kw["choices"])
            # a warm-start trial may train more epochs than the study's (tlsearch.search.portfolio's
            # TRAINING_ATTR; named here as text: the console starts without optuna and torch)
            own = (getattr(trial, "user_attrs", {}).get("portfolio_training") or {}).get("epochs")
            self.current[trial.number] = {
                "summary": summary,
                "epoch": 0,
                "metrics": {},
                "epochs": max(self.epochs or 0, int(own)) if own else self.epochs,
            }
            if not self.live:
                self._echo(f"trial {trial.number}: {summary}")
        elif name == "epoch_end":
            state = self.current.setdefault(
                trial.number, {"summary": "", "epoch": 0, "metrics": {}, "epochs": self.epochs}
            )
            state["epoch"], state["metrics"] = kw["epoch"] + 1, kw["metrics"]
            if kw.get("epochs"):  # the trial's plan now (a time budget re-plans it; not from watch.py)
                state["epochs"] = kw["epochs"]
            if not self.live:
                metrics = kw["metrics"]
                shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch_seconds")
                seconds = metrics.get("epoch_seconds", 0.0)
                self._echo(f"  trial {trial.number} epoch {kw['epoch'] + 1}: {shown}  ({seconds:.1f}s)")
        elif name == "trial_end":
            self._trial_end(trial, kw["state"], kw["value"], kw["metrics"])
        if self._live is not None:
            self._live.refresh()

    def _progress(self, task: str, done: int, total: int) -> None:
        """Work before or between trials: a bar in the live view; plain lines at its start, at each
        quarter and at its end."""
        work = self.work.get(task)
        if work is None:
            work = self.work[task] = _Work(done, total, time.perf_counter())
            if not self.live:
                self._echo(f"{task}: {total} to do")
        work.done, work.total = done, total
        quarter = 4 * done // max(total, 1)
        if done >= total:
            del self.work[task]
            if not self.live:
                self._echo(f"{task}: done in {time.perf_counter() - work.started:.1f}s")
        elif quarter > work.quarter:
            work.quarter = quarter
            if not self.live:
                self._echo(f"{task}: {done}/{total}")
        if self._live is not None:
            self._live.refresh()

    def _seed(self, trial: Any) -> None:
        """Learn the study (direction, metric, trials finished before this process) from the first event."""
        study = getattr(trial, "study", None)
        self.seeded = True
        if study is None:
            return
        import optuna

        self.maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE  # the metric's
        self.metric = str(study.user_attrs.get("metric") or (study.metric_names or ["value"])[0])
        done = study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        )
        self.counted.update(t.number for t in done)
        # their own durations: `status --watch` joining mid-study has a mean trial time at once
        self.durations.extend(s for t in done if (s := trial_seconds(t)) is not None)
        for t in done:
            if t.state == optuna.trial.TrialState.COMPLETE and t.values:
                choices = t.user_attrs.get("choices")
                self.rows.append(_Row(t.number, t.values[0], _describe(choices) if choices else "", _cost(t)))

    def _trial_end(self, trial: Any, state: str, value: float | None, metrics: dict[str, Any]) -> None:
        started = self.trial_started.pop(trial.number, None)
        seconds = trial_seconds(trial, started=started)
        info = self.current.pop(trial.number, {"summary": ""})
        # A trial the study already counted (a watcher may report one that ended as this console
        # read the study) adds nothing.
        new = trial.number not in self.counted
        if state in ("COMPLETE", "PRUNED") and new:
            self.counted.add(trial.number)
            if seconds is not None:
                self.durations.append(seconds)
        if state == "COMPLETE" and value is not None and new:
            self.rows.append(_Row(trial.number, float(value), info["summary"], _cost(trial)))
        if self.live:
            return
        detail = f"value {value:.4g}" if value is not None else str(metrics.get("failure", ""))
        if value is not None:
            detail += _kept_epoch(getattr(trial, "user_attrs", None) or {})
        progress = f"[{self.finished}/{self.total}]" if self.total else f"[{self.finished}]"
        eta = self.eta()
        tail = (
            f", about {_duration(eta)} left" if eta is not None and self.finished < (self.total or 0) else ""
        )
        after = f" after {seconds:.1f}s" if seconds is not None else ""
        self._echo(f"trial {trial.number} {state.lower()}{after} {detail} {progress}{tail}".rstrip())

    # --- end of run -------------------------------------------------------------------------------

    def leaderboard(self, study: optuna.Study, *, metric: str, top: int = 5) -> None:
        """Print the study's final standing: counts by state and its best ``top`` trials."""
        import optuna

        from tlsearch.report import format_leaderboard, leaderboard

        self.close()
        counts = {s.name.lower(): sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
        self._echo("")
        self._echo(f"study {study.study_name}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        for line in format_leaderboard(leaderboard(study, top=top), metric=metric):
            self._echo(line)

    @contextmanager
    def working(self, text: str) -> Iterator[None]:
        """Show that ``text`` is under way (an ONNX export and its checks take a while): a spinner
        on a terminal, one line otherwise."""
        if not self.live:
            self._echo(f"{text}…")
            yield
            return
        from rich.console import Console as RichConsole

        with RichConsole(file=self.stream).status(text):
            yield

    def exported(self, report: Any) -> None:
        self._echo(f"\nexported {report.path} (onnxruntime parity: max abs diff {report.max_abs_diff:.2e})")


def trial_seconds(
    trial: Any, *, started: datetime | None = None, now: datetime | None = None
) -> float | None:
    """How long ``trial`` ran: from its own ``datetime_start`` (else ``started``, when this console
    saw it start) to its ``datetime_complete`` (else ``now``). None when its start is unknown —
    better no figure than the time between two looks at the study."""
    start = getattr(trial, "datetime_start", None) or started
    if start is None:
        return None
    end = getattr(trial, "datetime_complete", None) or now or datetime.now()
    return max(0.0, (end - start).total_seconds())


def _kept_epoch(attrs: dict[str, Any]) -> str:
    """`` (epoch 2 of 4, stopped: patience)``: the epoch a complete trial kept, when not its last."""
    best, run, stopped = attrs.get("best_epoch"), attrs.get("epochs_run"), attrs.get("stopped")
    if not isinstance(best, int) or not isinstance(run, int) or (best == run - 1 and not stopped):
        return ""
    reason = {"timeout": "cut by the timeout"}.get(str(stopped), f"stopped: {stopped}") if stopped else ""
    return f" (epoch {best + 1} of {run}{', ' + reason if reason else ''})"


def _describe(choices: dict[str, Any]) -> str:
    from tlsearch.search.sampling import describe_choices  # imports torch: only once trials run

    return describe_choices(choices)


def _cost(trial: Any) -> tuple[float, ...]:
    from tlsearch.search.objectives import cost_key

    return cost_key(trial) if hasattr(trial, "user_attrs") else (float(trial.number),)


def _duration(seconds: float | None) -> str:
    from tlsearch.report import format_duration

    return format_duration(seconds)
