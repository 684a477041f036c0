"""Where a study stands: trials by state, the best trial, time spent and time left; and its leaderboard."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import optuna

from tlsearch.eta import time_left
from tlsearch.report._classes import STATUS_PAIRS, confused_pairs, format_confused
from tlsearch.report._source import StudySource, open_source, plugin_labels, trial_seconds

TrialState = optuna.trial.TrialState


def leaderboard(
    study: optuna.Study, *, top: int | None = None, tie_tolerance: float = 0.0
) -> list[dict[str, Any]]:
    """The complete trials, best first: one dict per trial with ``rank``, ``trial``, ``value``,
    ``summary``, ``plugins`` (a label per kind), ``metrics``, ``params`` (parameter count) and
    ``seconds``. ``top`` keeps the first ones. Order: cost-aware, as best-trial selection is
    (:func:`tlsearch.search.objectives.ranked_trials`: equal scores, the cheaper first; feasible
    before infeasible; in a multi-objective study the Pareto front first, ``value`` its metric)."""
    from tlsearch.search.objectives import ranked_trials

    complete = ranked_trials(study, tie_tolerance=tie_tolerance)
    return [_row(rank, t) for rank, t in enumerate(complete[:top] if top else complete, 1)]


def format_leaderboard(rows: list[dict[str, Any]], *, metric: str) -> list[str]:
    """The lines of a leaderboard (:func:`leaderboard`'s rows), as ``tlsearch run`` and
    ``tlsearch status`` print it: ``  #1  trial 4   accuracy 0.9375  timm(resnet18) + linear …``."""
    return [
        f"  #{row['rank']}  trial {row['trial']:<3} {metric} {_value(row['value'])}  {row['summary']}".rstrip()
        for row in rows
    ]


def _value(value: float | None) -> str:
    return "?" if value is None else f"{value:.4f}"


def _row(rank: int, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    from tlsearch.search.sampling import describe_choices

    choices = trial.user_attrs.get("choices") or {}
    try:
        summary = describe_choices(choices) if choices else ""
    except (KeyError, TypeError, ValueError):
        summary = ""
    return {
        "rank": rank,
        "trial": trial.number,
        "value": trial.values[0] if trial.values else None,
        "summary": summary,
        "plugins": plugin_labels(choices) if choices else {},
        "metrics": trial.user_attrs.get("metrics") or {},
        "params": trial.user_attrs.get("params"),
        "seconds": trial_seconds(trial),
        "best_epoch": trial.user_attrs.get("best_epoch"),
        "stopped": trial.user_attrs.get("stopped"),
    }


def study_status(
    source: str | Path | StudySource,
    *,
    study_name: str | None = None,
    storage: str | None = None,
    now: dt.datetime | None = None,
    top: int = 5,
) -> dict[str, Any]:
    """A JSON-able summary of the study in ``source`` (a study folder or a storage URL, see
    :func:`~tlsearch.report.open_source`)::

        {"study": "quickstart", "storage": "sqlite:///…", "folder": "runs/quickstart",
         "metric": "accuracy", "direction": "maximize", "budget": 6,
         "counts": {"complete": 4, "pruned": 1, "failed": 1, "running": 0, "waiting": 0},
         "finished": 5, "remaining": 1,
         "failures": [{"trial": 3, "reason": "RuntimeError: …"}],
         "pruned": [{"trial": 4, "epoch": 2}],       # epochs count from 1: its last, 2nd, epoch
         "running": [{"trial": 6, "seconds": 12.5, "summary": "…"}],
         "best": {"trial": 2, "value": 0.97, "plugins": {…}, "choices": {…}, "params": 3.2e6, …},
         "leaderboard": [{"rank": 1, "trial": 2, "value": 0.97, "summary": "…", …}, …],
         "time": {"trials_seconds": 118.2, "mean_trial_seconds": 19.7, "wall_seconds": 130.0},
         "eta_seconds": 19.7,
         "export": {"trial": 2, "value": 0.97, "test": {"metrics": {"accuracy": 0.95}, "images": 40, …},
                    "soup": {"exported": false, "ingredients": [2], "reason": "…", …}, …}}

    ``warning`` is one line when the best trial is no better than the task's trivial baseline
    (:mod:`tlsearch.search.baseline`), else None. ``leaderboard`` holds the best ``top`` complete trials (:func:`leaderboard`'s rows, in the order
    ``tlsearch run`` prints them). ``finished`` counts complete and pruned trials, as the budget does. ``eta_seconds`` is
    :func:`tlsearch.eta.time_left` at the time spent per finished trial (all ended trials' time,
    failed ones included, over the finished count) and the running trials' time so far: None without a budget, or when there is no honest figure (a
    running trial already past the mean trial's time), rather than "0 s left" while it runs.
    ``export`` is what the last export wrote (None before one): its trial and validation score, the
    held-out ``test`` score of the exported file (None without a test split) and the ``soup``.
    """
    src = (
        source
        if isinstance(source, StudySource)
        else open_source(source, study_name=study_name, storage=storage)
    )
    trials = src.study.get_trials(deepcopy=False)
    now = now or dt.datetime.now()
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    counts = {
        "complete": len(by_state[TrialState.COMPLETE]),
        "pruned": len(by_state[TrialState.PRUNED]),
        "failed": len(by_state[TrialState.FAIL]),
        "running": len(by_state[TrialState.RUNNING]),
        "waiting": len(by_state[TrialState.WAITING]),
    }
    finished = counts["complete"] + counts["pruned"]
    timed = [s for t in trials if t.state.is_finished() and (s := trial_seconds(t)) is not None]
    mean = sum(timed) / len(timed) if timed else None
    running = [_running(t, now) for t in by_state[TrialState.RUNNING]]
    remaining = None if src.budget is None else max(0, src.budget - finished)
    per_finished = sum(timed) / finished if finished and timed else None
    eta = (
        None
        if src.budget is None or per_finished is None
        else time_left(
            total=src.budget,
            finished=finished,
            durations=timed,
            running=[(r["seconds"] or 0.0, r["epochs_done"], None) for r in running],
            mean=per_finished,
        )
    )
    from tlsearch.search.baseline import study_baseline_warning

    best = _best(src.study)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    last = now if running else (max(ends) if ends else None)
    wall = (last - min(starts)).total_seconds() if starts and last is not None else None
    return {
        "study": src.study.study_name,
        "storage": src.storage,
        "folder": str(src.folder) if src.folder is not None else None,
        "metric": src.metric,
        "direction": "maximize" if src.maximize else "minimize",
        "budget": src.budget,
        "counts": counts,
        "finished": finished,
        "remaining": remaining,
        "failures": [
            {"trial": t.number, "reason": str(t.user_attrs.get("failure") or "unknown (no reason recorded)")}
            for t in by_state[TrialState.FAIL]
        ],
        "pruned": [
            {"trial": t.number, "epoch": None if t.last_step is None else t.last_step + 1}
            for t in by_state[TrialState.PRUNED]
        ],
        "running": running,
        "best": best,
        "leaderboard": leaderboard(src.study, top=top),
        "warning": None if best is None else study_baseline_warning(src.study, best["metrics"]),
        "time": {"trials_seconds": sum(timed), "mean_trial_seconds": mean, "wall_seconds": wall},
        "eta_seconds": eta,
        "export": src.study.user_attrs.get("export"),
    }


def _running(trial: optuna.trial.FrozenTrial, now: dt.datetime) -> dict[str, Any]:
    row = _row(0, trial)
    seconds = (now - trial.datetime_start).total_seconds() if trial.datetime_start else None
    history = trial.user_attrs.get("history") or []
    return {
        "trial": trial.number,
        "seconds": seconds,
        "summary": row["summary"],
        "epochs_done": len(history),
        "last_metrics": history[-1] if history else {},
    }


def _best(study: optuna.Study) -> dict[str, Any] | None:
    rows = leaderboard(study, top=1)
    if not rows:
        return None
    trial = study.trials[rows[0]["trial"]]
    return {
        **{k: v for k, v in rows[0].items() if k != "rank"},
        "choices": trial.user_attrs.get("choices") or {},
        "optuna_params": trial.params,
        "per_class": trial.user_attrs.get("per_class") or [],
        "confused": most_confused(trial.user_attrs),
    }


def most_confused(attrs: dict[str, Any], *, limit: int = STATUS_PAIRS) -> list[dict[str, Any]]:
    """A trial's most confused class pairs (``true``, ``predicted``, ``count``, ``share`` of the
    true class's validation images) from its recorded ``confusion`` and ``per_class`` labels."""
    labels = [str(r["class"]) for r in attrs.get("per_class") or []]
    pairs = confused_pairs(attrs.get("confusion"), labels=labels, limit=limit) if labels else []
    return [p.to_dict() for p in pairs]


#: ``tlsearch status`` lists every class up to this many, else the worst by F1
PER_CLASS_ROWS = 20


def format_per_class(rows: list[dict[str, Any]], *, limit: int = PER_CLASS_ROWS) -> list[str]:
    """The best trial's per-class table (support, precision, recall, F1 on validation); with more
    than ``limit`` classes, the ``limit`` with the lowest F1. Multi-label rows (they carry ``ap``)
    get :func:`format_per_label`'s table instead."""
    if not rows:
        return []
    if any("ap" in r for r in rows):
        return format_per_label(rows, limit=limit)
    shown = rows if len(rows) <= limit else sorted(rows, key=lambda r: r["f1"])[:limit]
    width = max(5, *(len(str(r["class"])) for r in shown))
    title = "per class (validation)" if shown is rows else f"per class, the {limit} lowest F1 of {len(rows)}"
    lines = [f"      {title}:", f"        {'class':<{width}}  support  precision  recall     f1"]
    for r in shown:
        lines.append(
            f"        {str(r['class']):<{width}}  {int(r['support']):>7}  {r['precision']:>9.3f}"
            f"  {r['recall']:>6.3f}  {r['f1']:>5.3f}"
        )
    return lines


def format_per_label(rows: list[dict[str, Any]], *, limit: int = PER_CLASS_ROWS) -> list[str]:
    """A multi-label trial's per-label table: validation support (images holding the label), AP,
    the tuned threshold, and precision, recall, F1 at that threshold. Every label up to ``limit``
    labels, else the ``limit`` with the lowest AP (the ones to look at). The title is short (the
    mAP over all labels, how many labels are shown of how many); note lines under the table say
    what the rows are. A label without a validation positive has no AP (``—``: it is not in the
    mAP either) and is listed after the others."""
    if not rows:
        return []
    scored = [r for r in rows if int(r["support"]) > 0]
    order = sorted(scored, key=lambda r: float(r.get("ap") or 0.0)) + [r for r in rows if r not in scored]
    shown = rows if len(rows) <= limit else order[:limit]
    width = max(5, *(len(str(r["class"])) for r in shown))
    mean_ap = sum(float(r.get("ap") or 0.0) for r in scored) / len(scored) if scored else None
    unscored = len(rows) - len(scored)
    summary = f"mAP {mean_ap:.3f}" if mean_ap is not None else "no mAP"
    count = f"all {len(rows)} labels" if shown is rows else f"{len(shown)} of {len(rows)} labels"
    lines = [
        f"      per label (validation, {summary}, {count}):",
        f"        {'label':<{width}}  support     AP  threshold  precision  recall     f1",
    ]
    for r in shown:
        has_ap = int(r["support"]) > 0 and r.get("ap") is not None
        ap = f"{float(r['ap']):>5.3f}" if has_ap else f"{'—':>5}"
        threshold = r.get("threshold")
        cut = f"{float(threshold):>9.3f}" if threshold is not None else f"{'—':>9}"
        lines.append(
            f"        {str(r['class']):<{width}}  {int(r['support']):>7}  {ap}  {cut}  {r['precision']:>9.3f}"
            f"  {r['recall']:>6.3f}  {r['f1']:>5.3f}"
        )
    if shown is not rows:
        lines.append(f"        shown: the {len(shown)} labels with the lowest AP")
    lines.append("        precision, recall, F1: at each label's tuned threshold")
    if mean_ap is None:
        lines.append("        no label has a validation positive: no AP, no mAP")
    elif unscored:
        lines.append(f"        {unscored} label(s) without a validation positive: no AP (—), not in the mAP")
    return lines


def tuned_params(best: dict[str, Any]) -> dict[str, Any]:
    """The best trial's Optuna parameters less the plugin choices its ``plugins`` labels already
    show (``freezing: lp_ft`` once, not again as ``freezing = lp_ft``)."""
    return {k: v for k, v in best["optuna_params"].items() if k not in best["plugins"]}


def export_lines(export: dict[str, Any] | None, *, metric: str) -> list[str]:
    """The status lines on the exported model: validation and held-out test score, the soup."""
    if not export:
        return []
    soup = export.get("soup") or {}
    what = f"soup of trials {soup['ingredients']}" if soup.get("exported") else f"trial {export['trial']}"
    line = f"  exported: {what}  val {metric} {export['value']:.4g}"
    test = export.get("test")
    if test:  # the study's metric beside its validation score (every metric is in the model's metadata)
        scores = test["metrics"]
        shown = {metric: scores[metric]} if metric in scores else scores
        line += f"; test {', '.join(f'{k} {v:.4g}' for k, v in shown.items())} on {test['images']} held-out image(s)"
    else:
        line += " (no test split: the validation score is optimistic after selection)"
    lines = [line]
    if soup:
        lines.append(f"      soup: {soup['reason']}")
        for item in soup.get("left_out", [])[:5]:
            lines.append(f"      left out trial {item['trial']}: {item['reason']}")
    return lines


def format_duration(seconds: float | None) -> str:
    """``95`` → ``1m35s``; None → ``?``."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_status(status: dict[str, Any]) -> str:
    """The human-readable text of ``tlsearch status``."""
    c = status["counts"]
    budget = status["budget"]
    lines = [
        f"study {status['study']}  ({status['folder'] or status['storage']})",
        f"  trials: {status['finished']}{f'/{budget}' if budget else ''} finished — {c['complete']} complete, "
        f"{c['pruned']} pruned, {c['failed']} failed, {c['running']} running"
        + (f", {c['waiting']} waiting" if c["waiting"] else ""),
        f"  time: {format_duration(status['time']['trials_seconds'])} in trials, "
        f"mean {format_duration(status['time']['mean_trial_seconds'])} per trial, "
        f"wall {format_duration(status['time']['wall_seconds'])}"
        + (
            f"; about {format_duration(status['eta_seconds'])} left for {status['remaining']} trial(s)"
            if status["remaining"] and status["eta_seconds"] is not None
            else ""
        ),
    ]
    best = status["best"]
    if best:
        lines.append(
            f"  best: trial {best['trial']}  {status['metric']} {best['value']:.4g}  {best['summary']}"
        )
        if best.get("best_epoch") is not None:
            stopped = f", stopped: {best['stopped']}" if best.get("stopped") else ""
            lines.append(f"      kept epoch {best['best_epoch'] + 1}{stopped}")
        for kind, label in best["plugins"].items():
            lines.append(f"      {kind:<13} {label}")
        for name, value in tuned_params(best).items():
            lines.append(
                f"      {name} = {value:.4g}" if isinstance(value, float) else f"      {name} = {value}"
            )
        if best["params"]:
            lines.append(
                f"      model: {best['params'] / 1e6:.2f}M parameters, trained in {format_duration(best['seconds'])}"
            )
        lines += format_per_class(best.get("per_class") or [])
        lines += format_confused(best.get("confused") or [])
        if status.get("warning"):
            lines.append(f"  {status['warning']}")
    else:
        lines.append("  best: no complete trial yet")
    if status.get("leaderboard"):
        lines.append(f"  leaderboard (top {len(status['leaderboard'])}):")
        lines.extend(
            "  " + line for line in format_leaderboard(status["leaderboard"], metric=status["metric"])
        )
    lines += export_lines(status.get("export"), metric=status["metric"])
    for r in status["running"]:
        lines.append(
            f"  running: trial {r['trial']} for {format_duration(r['seconds'])}, "
            f"{r['epochs_done']} epoch(s) done  {r['summary']}"
        )
    for f in status["failures"]:
        lines.append(f"  failed: trial {f['trial']}: {f['reason']}")
    return "\n".join(lines)
