"""The study's machine-readable trail: one JSON line per study, trial and epoch event.

Written to ``<study folder>/trail.jsonl`` through the lifecycle hooks only, so it is also the worked
example of an observer plugin. Each line is appended with one ``O_APPEND`` write, so several workers
of one study can share the file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tlsearch import hookimpl

TRAIL_FILE = "trail.jsonl"


def _append(out_dir: str, record: dict[str, Any]) -> None:
    line = json.dumps({"time": round(time.time(), 3), "pid": os.getpid(), **record}, default=str) + "\n"
    fd = os.open(Path(out_dir) / TRAIL_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@hookimpl
def tlsearch_study_start(study: Any, out_dir: str) -> None:
    _append(out_dir, {"event": "study_start", "study": study.study_name})


@hookimpl
def tlsearch_trial_start(trial: Any, choices: dict[str, Any], out_dir: str) -> None:
    _append(out_dir, {"event": "trial_start", "trial": trial.number, "choices": choices})


@hookimpl
def tlsearch_epoch_end(trial: Any, epoch: int, metrics: dict[str, float], out_dir: str) -> None:
    _append(out_dir, {"event": "epoch_end", "trial": trial.number, "epoch": epoch, "metrics": metrics})


@hookimpl
def tlsearch_trial_end(
    trial: Any, state: str, value: float | None, metrics: dict[str, Any], out_dir: str
) -> None:
    record = {"event": "trial_end", "trial": trial.number, "state": state, "value": value, "metrics": metrics}
    attrs = getattr(trial, "user_attrs", None) or {}
    for key in ("best_epoch", "stopped"):  # the epoch kept, and why training ended early
        if attrs.get(key) is not None:
            record[key] = attrs[key]
    if state == "FAIL":  # the console shows one line; the traceback is kept here and on the trial
        record["traceback"] = attrs.get("failure_traceback")
    _append(out_dir, record)


@hookimpl
def tlsearch_study_end(study: Any, out_dir: str) -> None:
    _append(out_dir, {"event": "study_end", "study": study.study_name})
