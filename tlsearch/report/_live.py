"""The live terminal view of a running study, drawn with rich's ``Live``.

It reads what it draws from a :class:`LiveState` (the CLI's :class:`tlsearch.cli.console.Console`
is one): this module knows nothing of the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import IO, Any, Protocol

from rich.console import Console as RichConsole
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text


class WorkProgress(Protocol):
    """Work outside trials in progress (decoding images, ranking backbones)."""

    done: int
    total: int


class LeaderRow(Protocol):
    """One of the top trials so far."""

    number: int
    value: float
    summary: str


class LiveState(Protocol):
    """What the live view reads, four times a second, from whoever receives the search's events."""

    metric: str

    @property
    def total(self) -> int | None: ...  # the budget of finished trials (None: unknown)

    @property
    def finished(self) -> int: ...

    @property
    def current(
        self,
    ) -> Mapping[int, Mapping[str, Any]]: ...  # running trials: epoch, epochs, metrics, summary

    @property
    def work(self) -> Mapping[str, WorkProgress]: ...

    def eta(self) -> float | None: ...

    def leaders(self) -> Sequence[LeaderRow]: ...


class LiveView:
    """Trials bar (n/N, elapsed, ETA), a bar per piece of work outside trials (decoding images,
    ranking backbones), one epochs bar per running trial, and the top trials.

    Redrawn four times a second from the console's state (so elapsed time moves between events),
    and on every event. Output others print meanwhile goes above the view.
    """

    def __init__(self, console: LiveState, *, stream: IO[str] | None = None) -> None:
        self.console = console
        self.rich = RichConsole(file=stream) if stream is not None else RichConsole()
        self.trials = Progress(
            TextColumn("[bold]trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=self.rich,
        )
        self.trials_task = self.trials.add_task("trials", total=console.total, eta="")
        self.epochs = Progress(
            TextColumn("  trial {task.fields[number]:>3} epochs"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[metric]}"),
            console=self.rich,
        )
        self.epoch_tasks: dict[int, Any] = {}
        self.work = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.rich,
        )
        self.work_tasks: dict[str, Any] = {}
        self.live = Live(self, console=self.rich, refresh_per_second=4, transient=False)

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.refresh()
        self.live.stop()

    def refresh(self) -> None:
        c = self.console
        eta = c.eta()
        self.trials.update(
            self.trials_task,
            completed=c.finished,
            total=c.total,
            eta=f"ETA {_clock(eta)}" if eta is not None else "",
        )
        work = dict(c.work)
        for task in list(self.work_tasks):
            if task not in work:
                self.work.remove_task(self.work_tasks.pop(task))
        for task, progress in work.items():
            if task not in self.work_tasks:
                self.work_tasks[task] = self.work.add_task(task, total=progress.total)
            self.work.update(self.work_tasks[task], completed=progress.done, total=progress.total)
        current = dict(c.current)  # events change it from the main thread while rich redraws from its own
        for number in list(self.epoch_tasks):
            if number not in current:
                self.epochs.remove_task(self.epoch_tasks.pop(number))
        for number, state in current.items():
            if number not in self.epoch_tasks:
                self.epoch_tasks[number] = self.epochs.add_task(
                    "epochs", total=state.get("epochs"), number=number, metric=""
                )
            metrics = state["metrics"]
            shown = f"{c.metric} {metrics[c.metric]:.4g}" if c.metric in metrics else "first epoch running"
            self.epochs.update(
                self.epoch_tasks[number], completed=state["epoch"], metric=shown, total=state.get("epochs")
            )

    def __rich__(self) -> Group:
        c = self.console
        parts: list[Any] = [self.trials]
        if self.work_tasks:
            parts.append(self.work)
        current = dict(c.current)  # a copy: see refresh
        for number, state in current.items():
            parts.append(
                Text(f"  trial {number}: {state['summary']}", style="cyan", overflow="ellipsis", no_wrap=True)
            )
        if current:
            parts.append(self.epochs)
        leaders = c.leaders()
        if leaders:
            table = Table(
                title=f"top {len(leaders)} by {c.metric}", title_justify="left", box=None, padding=(0, 1)
            )
            table.add_column("trial", justify="right", no_wrap=True, min_width=5)
            table.add_column(c.metric, justify="right", no_wrap=True, min_width=max(6, len(c.metric)))
            table.add_column("plugins", overflow="ellipsis", no_wrap=True, ratio=1)
            for rank, row in enumerate(leaders, 1):
                table.add_row(
                    str(row.number),
                    f"{row.value:.4f}",
                    row.summary,
                    style="bold green" if rank == 1 else None,
                )
            parts.append(table)
        return Group(*parts)


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(max(0.0, seconds)))
