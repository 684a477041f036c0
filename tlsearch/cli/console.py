"""What ``tlsearch run`` prints: a line per trial and epoch, and a leaderboard at the end."""

from __future__ import annotations

import time
from typing import Any

import click
import optuna

from tlsearch.search.sampling import describe_choices


class Console:
    """Plain line-by-line progress (safe for logs and CI: no control characters)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.trial_started: dict[int, float] = {}

    def event(self, name: str, **kw: Any) -> None:
        trial = kw["trial"]
        if name == "trial_start":
            self.trial_started[trial.number] = time.perf_counter()
            click.echo(f"trial {trial.number}: {describe_choices(kw['choices'])}")
        elif name == "epoch_end":
            shown = {k: v for k, v in kw["metrics"].items() if k != "epoch_seconds"}
            text = "  ".join(f"{k} {v:.4g}" for k, v in shown.items())
            click.echo(f"  epoch {kw['epoch']}: {text}  ({kw['metrics']['epoch_seconds']:.1f}s)")
        elif name == "trial_end":
            seconds = time.perf_counter() - self.trial_started.get(trial.number, self.started)
            detail = f"value {kw['value']:.4g}" if kw["value"] is not None else kw["metrics"].get("failure", "")
            click.echo(f"trial {trial.number} {kw['state'].lower()} after {seconds:.1f}s {detail}".rstrip())

    def leaderboard(self, study: optuna.Study, *, metric: str, top: int = 5) -> None:
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        complete.sort(key=lambda t: t.value if t.value is not None else 0.0, reverse=maximize)
        counts = {s.name.lower(): sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
        click.echo("")
        click.echo(f"study {study.study_name}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        for rank, t in enumerate(complete[:top], 1):
            choices = t.user_attrs.get("choices")
            summary = describe_choices(choices) if choices else ""
            click.echo(f"  #{rank}  trial {t.number:<3} {metric} {t.value:.4f}  {summary}")

    def exported(self, report: Any) -> None:
        click.echo(f"\nexported {report.path} (onnxruntime parity: max abs diff {report.max_abs_diff:.2e})")
