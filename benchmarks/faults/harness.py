"""What a fault scenario needs: a tiny study, the real CLI, the study's trials, a small disk.

A scenario is a function ``(Sandbox) -> Outcome`` registered with :func:`scenario`; it runs
``python -m tlsearch run`` (the real CLI, in a subprocess) on the tiny study, injects its fault,
and says how many trials should be complete, how many are, and how many that were complete before
the fault are no longer. The bar of every row: ``n_trials`` exact and 0 completed trials lost.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tlsearch.testing import disk
from tlsearch.testing.disk import fill, wait_for  # noqa: F401 - the scenarios import them from here

SCENARIOS: dict[str, Callable[[Sandbox], Outcome]] = {}


def scenario(name: str) -> Callable[[Callable[[Sandbox], Outcome]], Callable[[Sandbox], Outcome]]:
    """Register a scenario under ``name`` (a row of the table)."""

    def register(function: Callable[[Sandbox], Outcome]) -> Callable[[Sandbox], Outcome]:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = function
        return function

    return register


class Skip(Exception):
    """The scenario cannot run here (e.g. no permission to mount a tmpfs); the message says why."""


@dataclass
class Outcome:
    """What one run of a scenario found."""

    expected: int
    complete: int
    lost: int
    note: str = ""
    extra_ok: bool = True  # a scenario's own bar beyond the two common ones (e.g. no 30 s stall)

    @property
    def held(self) -> bool:
        return self.complete == self.expected and self.lost == 0 and self.extra_ok


@dataclass
class Sandbox:
    """A fresh folder with the tiny study's data, for one run of one scenario."""

    root: Path
    data: Path
    python: str = sys.executable
    timeout: float = 300
    log: list[str] = field(default_factory=list)

    def study(self, *, plugins: list[Path] = (), n_trials: int = 3, **extra: object) -> Path:  # type: ignore[assignment]
        """Write the tiny study (4 shape classes, a tiny random timm model, 1 epoch)."""
        config = {
            "name": "tiny",
            "data": {"train": str(self.data / "train"), "val": str(self.data / "val"), "image_size": 32},
            "space": {
                "backbone": {"timm": {"model": "test_efficientnet", "weights": "random"}},
                "head": ["linear"],
                "freezing": ["linear_probe"],
                "regularizers": {"label_smoothing": {}},
            },
            "training": {"epochs": 1, "batch_size": 16, "lr": {"low": 1e-3, "high": 1e-2, "log": True}},
            "search": {"n_trials": n_trials, "seed": 0, "pruner": "none"},
            "export": {"enabled": False},
            **({"plugins": [str(p) for p in plugins]} if plugins else {}),
            **extra,
        }
        path = self.root / f"study-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def command(self, study: Path, out: Path, *args: str) -> list[str]:
        return [
            self.python,
            "-m",
            "tlsearch",
            "run",
            str(study),
            "--out",
            str(out),
            "--console",
            "plain",
            *args,
        ]

    def run(self, study: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """``tlsearch run`` to its end; its exit code and output are kept in the log."""
        done = subprocess.run(
            self.command(study, out, *args), capture_output=True, text=True, env=_env(), timeout=self.timeout
        )
        self.log.append(f"$ run {' '.join(args)} -> {done.returncode}\n{done.stderr[-2000:]}")
        return done

    def start(
        self, study: Path, out: Path, *args: str, preexec_fn: Callable[[], None] | None = None
    ) -> subprocess.Popen[str]:
        """``tlsearch run`` in the background (its stderr to a file in the sandbox, so that a
        long run never blocks on a full pipe)."""
        return subprocess.Popen(
            self.command(study, out, *args),
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "started.err").open("w"),
            text=True,
            env=_env(),
            preexec_fn=preexec_fn,
        )


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def complete_trials(storage: str) -> set[int]:
    """Numbers of the COMPLETE trials in ``storage`` (a journal path or a database URL)."""
    import optuna

    from tlsearch.search.storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="tiny", storage=make_storage(storage, heartbeat_interval=None))
    return {t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}


def outcome(
    storage: str, *, before: set[int], expected: int, note: str = "", extra_ok: bool = True
) -> Outcome:
    """Compare the trials complete now with those complete before the fault."""
    try:
        now = complete_trials(storage)
    except Exception as exc:  # the study no longer opens: everything is lost
        return Outcome(expected, 0, len(before), f"cannot open: {type(exc).__name__}: {exc}"[:200], extra_ok)
    return Outcome(expected, len(now), len(before - now), note, extra_ok)


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (root only; :class:`Skip` otherwise)."""
    try:
        with disk.small_disk(folder, size=size) as mounted:
            yield mounted
    except disk.NoSmallDisk as exc:
        raise Skip(str(exc)) from None
