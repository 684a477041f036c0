"""The report's pictures, drawn with matplotlib's Agg canvas (no window, no ``plt.show``).

Each function takes the study and returns a :class:`Plot`: a figure, or no figure and a note saying
why (too few trials, no trial recorded the needed attribute). Figures are built with
``matplotlib.figure.Figure`` directly, never through pyplot's global state, so drawing a report
changes nothing in the caller's matplotlib (Optuna's own matplotlib plots switch the global style
sheet, which is why they are not used here; its importance evaluators are).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import matplotlib
import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tlsearch.report._source import StudySource, plugin_labels, trial_seconds
from tlsearch.search.objectives import primary_value

TrialState = optuna.trial.TrialState
COLORS = {"complete": "#1f77b4", "pruned": "#ff7f0e", "failed": "#d62728", "best": "#2ca02c"}
KINDS = ("backbone", "head", "freezing", "regularizers")
_HORIZONTAL: dict[str, Any] = (
    {"orientation": "horizontal"}
    if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10)
    else {"vert": False}
)


@dataclass
class Plot:
    """One picture of the report: ``name`` (file stem), ``title``, ``figure`` or a ``note`` saying
    why there is none; ``data`` carries the numbers behind it where the report shows them too."""

    name: str
    title: str
    figure: Figure | None = None
    note: str = ""
    data: Any = None


def _figure(width: float = 7.5, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values is not None
    ]


def _curve(trial: optuna.trial.FrozenTrial, metric: str) -> list[float]:
    history = trial.user_attrs.get("history")
    if isinstance(history, list) and history:
        return [float(h[metric]) for h in history if isinstance(h, dict) and metric in h]
    return [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]


def optimization_history(src: StudySource) -> Plot:
    """Every trial's score in order, pruned ones at their last reported value, and the best so far."""
    plot = Plot("optimization_history", "Optimisation history")
    trials = src.study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    if not complete:
        plot.note = "No complete trial yet."
        return plot
    fig = _figure()
    ax = fig.add_subplot()
    pruned = [
        (t.number, c[-1]) for t in trials if t.state == TrialState.PRUNED and (c := _curve(t, src.metric))
    ]
    ax.scatter(
        [t.number for t in complete],
        [primary_value(t) for t in complete],
        color=COLORS["complete"],
        label="complete",
        zorder=3,
    )
    if pruned:
        ax.scatter(
            *zip(*pruned, strict=True),
            marker="x",
            color=COLORS["pruned"],
            label="pruned (last epoch reached)",
            zorder=3,
        )
    best: float | None = None
    xs: list[int] = []
    ys: list[float] = []
    for t in sorted(complete, key=lambda t: t.number):
        value = primary_value(t)
        if best is None or (value > best if src.maximize else value < best):
            best = value
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color=COLORS["best"], label="best so far")
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    for i, number in enumerate(failed):
        ax.axvline(
            number, color=COLORS["failed"], alpha=0.4, linestyle=":", label="failed" if i == 0 else None
        )
    ax.set_xlabel("trial")
    ax.set_ylabel(src.metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    plot.figure = fig
    return plot


def learning_curves(src: StudySource) -> Plot:
    """The metric per epoch of every trial; pruned ones dashed and ending in a cross where they were cut."""
    plot = Plot("learning_curves", "Learning curves")
    styles = {
        TrialState.COMPLETE: ("complete", "-"),
        TrialState.PRUNED: ("pruned", "--"),
        TrialState.FAIL: ("failed", ":"),
    }
    curves = [
        (t, c)
        for t in src.study.get_trials(deepcopy=False)
        if t.state in styles and (c := _curve(t, src.metric))
    ]
    if not curves:
        plot.note = "No trial has reported an epoch yet."
        return plot
    fig = _figure()
    ax = fig.add_subplot()
    seen: set[str] = set()
    best_number = _best_number(src)
    for trial, curve in curves:
        label, style = styles[trial.state]
        epochs = list(range(1, len(curve) + 1))
        is_best = trial.number == best_number
        color = COLORS["best"] if is_best else COLORS[label]
        legend = f"best (trial {trial.number})" if is_best else (label if label not in seen else None)
        seen.add(label)
        ax.plot(
            epochs,
            curve,
            linestyle=style,
            marker="o",
            markersize=3,
            color=color,
            alpha=1.0 if is_best else 0.6,
            linewidth=2.2 if is_best else 1.2,
            label=legend,
            zorder=4 if is_best else 2,
        )
        kept = trial.user_attrs.get("best_epoch")
        if is_best and isinstance(kept, int) and 0 <= kept < len(curve):  # the epoch whose weights it keeps
            ax.plot(
                kept + 1,
                curve[kept],
                marker="*",
                markersize=14,
                color=COLORS["best"],
                linestyle="none",
                label="kept epoch",
                zorder=5,
            )
        if trial.state == TrialState.PRUNED:
            ax.plot(
                epochs[-1],
                curve[-1],
                marker="X",
                markersize=9,
                color=COLORS["pruned"],
                linestyle="none",
                zorder=3,
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(src.metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    plot.figure = fig
    return plot


def _best_number(src: StudySource) -> int | None:
    complete = _complete(src.study)
    if not complete:
        return None
    pick = max if src.maximize else min
    return pick(complete, key=primary_value).number


def plugin_comparison(src: StudySource) -> Plot:
    """Per plugin kind, the metric of the complete trials that used each plugin: its best (star), the
    others (dots), and how many of its trials were pruned or failed."""
    plot = Plot("plugin_comparison", "Plugins compared")
    trials = [t for t in src.study.get_trials(deepcopy=False) if t.user_attrs.get("choices")]
    if not any(t.state == TrialState.COMPLETE for t in trials):
        plot.note = "No complete trial yet."
        return plot
    groups: dict[str, dict[str, dict[str, Any]]] = {
        k: defaultdict(lambda: {"values": [], "pruned": 0, "failed": 0}) for k in KINDS
    }
    for t in trials:
        for kind, label in plugin_labels(t.user_attrs["choices"]).items():
            g = groups[kind][label]
            if t.state == TrialState.COMPLETE and t.values is not None:
                g["values"].append(primary_value(t))
            elif t.state == TrialState.PRUNED:
                g["pruned"] += 1
            elif t.state == TrialState.FAIL:
                g["failed"] += 1
    fig = _figure(10, 6.5)
    axes = fig.subplots(2, 2)
    pick = max if src.maximize else min
    table = {}
    for ax, kind in zip(axes.flat, KINDS, strict=True):
        entries = sorted(
            groups[kind].items(),
            key=lambda kv: pick(kv[1]["values"]) if kv[1]["values"] else math.nan,
            reverse=not src.maximize,
        )
        entries = [e for e in entries if e[1]["values"]] + [e for e in entries if not e[1]["values"]]
        table[kind] = {
            label: {
                "best": pick(g["values"]) if g["values"] else None,
                "complete": len(g["values"]),
                "pruned": g["pruned"],
                "failed": g["failed"],
            }
            for label, g in entries
        }
        for y, (_label, g) in enumerate(entries):
            values = g["values"]
            if values:
                # the best is its star, not also a dot beneath it: dots + star = the complete trials
                others = list(values)
                others.remove(pick(values))
                jitter = [((i % 5) - 2) * 0.06 for i in range(len(others))]
                ax.scatter(
                    others, [y + j for j in jitter], color=COLORS["complete"], alpha=0.6, s=18, zorder=2
                )
                if len(values) >= 4:
                    ax.boxplot(
                        [values],
                        positions=[y],
                        widths=0.5,
                        **_HORIZONTAL,
                        showfliers=False,
                        medianprops={"color": COLORS["complete"]},
                        zorder=1,
                    )
                ax.scatter(
                    [pick(values)],
                    [y],
                    marker="*",
                    s=160,
                    color=COLORS["best"],
                    zorder=3,
                    edgecolor="black",
                    linewidth=0.5,
                )
        labels = [_tick(label, g) for label, g in entries]
        ax.set_yticks(range(len(entries)), labels, fontsize="small")
        ax.set_ylim(-0.6, len(entries) - 0.4)
        ax.invert_yaxis()
        ax.set_title(kind, fontsize="medium")
        ax.set_xlabel(src.metric, fontsize="small")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{src.metric} per plugin (star: best, dots: its other complete trials)", fontsize="medium")
    plot.figure, plot.data = fig, table
    return plot


def _tick(label: str, g: dict[str, Any]) -> str:
    short = label if len(label) <= 28 else label[:27] + "…"
    extra = [f"{len(g['values'])} done"]
    if g["pruned"]:
        extra.append(f"{g['pruned']} pruned")
    if g["failed"]:
        extra.append(f"{g['failed']} failed")
    return f"{short}\n({', '.join(extra)})"


def param_importances(src: StudySource) -> Plot:
    """Which sampled choices mattered most, by Optuna's default importance evaluator (PED-ANOVA,
    which handles the conditional parameters a define-by-run space has)."""
    plot = Plot("param_importances", "Hyperparameter importances")
    complete = _complete(src.study)
    if len(complete) < 2:
        plot.note = f"Importances need at least 2 complete trials; this study has {len(complete)}."
        return plot
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            importances = optuna.importance.get_param_importances(src.study)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        plot.note = f"Importances could not be computed from {len(complete)} complete trials: {exc}"
        return plot
    if any("less than 2 trials" in str(w.message) for w in caught):
        plot.note = (
            f"From {len(complete)} complete trials, some parameter values were tried only once: "
            "read these importances as a hint."
        )
    if not importances:
        plot.note = "No parameter varied between the complete trials."
        return plot
    names = list(importances)[::-1]
    fig = _figure(7.5, max(2.0, 0.45 * len(names) + 1.0))
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color=COLORS["complete"])
    for y, name in enumerate(names):
        ax.text(importances[name], y, f" {importances[name]:.2f}", va="center", fontsize="small")
    ax.set_xlabel(f"importance for {src.metric} (sums to 1)")
    ax.set_xlim(0, max(importances.values()) * 1.15 or 1)
    ax.tick_params(axis="y", labelsize="small")
    ax.grid(axis="x", alpha=0.3)
    plot.figure, plot.data = fig, importances
    return plot


def pareto_front(points: list[tuple[float, float, int]], *, maximize: bool) -> list[tuple[float, float, int]]:
    """The ``(cost, score, trial)`` points that no other point beats on both: lower cost and a
    better score. Returned by increasing cost."""
    front: list[tuple[float, float, int]] = []
    best: float | None = None
    for cost, score, number in sorted(points, key=lambda p: (p[0], -p[1] if maximize else p[1])):
        if best is None or (score > best if maximize else score < best):
            front.append((cost, score, number))
            best = score
    return front


def cost_tradeoff(src: StudySource) -> Plot:
    """Metric against model size (parameters) and against training time, Pareto front marked."""
    plot = Plot("cost_tradeoff", "Accuracy vs cost")
    complete = _complete(src.study)
    axes_data = []
    for title, get, log in (
        ("parameters (millions)", lambda t: _params_m(t), True),
        ("trial time (seconds)", trial_seconds, False),
    ):
        points = [(float(c), primary_value(t), t.number) for t in complete if (c := get(t)) is not None]
        if points:
            axes_data.append((title, points, log))
    if not axes_data:
        plot.note = "No complete trial recorded its parameter count or time."
        return plot
    fig = _figure(10 if len(axes_data) == 2 else 6, 4.2)
    axes = fig.subplots(1, len(axes_data), squeeze=False)[0]
    fronts = {}
    for ax, (title, points, log) in zip(axes, axes_data, strict=True):
        front = pareto_front(points, maximize=src.maximize)
        fronts[title] = [n for _, _, n in front]
        ax.scatter(
            [p[0] for p in points], [p[1] for p in points], color=COLORS["complete"], alpha=0.6, label="trial"
        )
        ax.plot(
            [p[0] for p in front],
            [p[1] for p in front],
            color=COLORS["best"],
            marker="o",
            markersize=8,
            drawstyle="steps-post",
            label="Pareto front",
        )
        for cost, score, number in front:
            ax.annotate(
                f"trial {number}",
                (cost, score),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize="x-small",
            )
        if log and max(p[0] for p in points) / max(min(p[0] for p in points), 1e-9) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.set_ylabel(src.metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    plot.figure, plot.data = fig, fronts
    return plot


def _params_m(trial: optuna.trial.FrozenTrial) -> float | None:
    params = trial.user_attrs.get("params")
    return params / 1e6 if isinstance(params, (int, float)) and params > 0 else None


ALL_PLOTS = (optimization_history, learning_curves, plugin_comparison, param_importances, cost_tradeoff)
