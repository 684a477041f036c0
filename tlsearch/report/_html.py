"""The self-contained HTML report: plots as inline SVG, tables, no network resource at all.

The file opens offline and can be mailed or archived as is: no script, no stylesheet or font
fetched from anywhere; the SVG that matplotlib writes is stripped of its XML prologue and metadata
(which name W3C and Dublin Core URLs) so the document holds no URL.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlsearch import __version__
from tlsearch.report._classes import CSS as CLASSES_CSS
from tlsearch.report._classes import classes_section
from tlsearch.report._plots import ALL_PLOTS, Plot
from tlsearch.report._source import StudySource, open_source
from tlsearch.report._status import format_duration, leaderboard, study_status, tuned_params

_SVG_PROLOGUE = re.compile(r"^.*?(?=<svg)", re.S)
_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_RESULTS = ("verification", "quantization", "quantisation", "parity", "error")
_XMLNS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
.sub { color: #666; margin-top: 0; } .note { color: #666; font-style: italic; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.5rem 1rem; min-width: 8rem; }
.card b { display: block; font-size: 1.4rem; }
figure { margin: 0.5rem 0; } svg { max-width: 100%; height: auto; }
nav a { margin-right: 0.8rem; }
"""


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote: the HTML file and, with ``png=True``, one PNG per plot."""

    html: Path
    pngs: list[Path] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)


def write_report(
    source: str | Path | StudySource,
    *,
    out: str | Path | None = None,
    png: bool = False,
    study_name: str | None = None,
    storage: str | None = None,
) -> ReportFiles:
    """Write the report of the study in ``source`` (a study folder or a storage URL) to ``out``
    (default: ``<folder>/report.html``, or ``report.html`` here for a storage URL).

    With ``png=True`` every plot is also saved as a PNG in ``<out stem>_plots/`` beside the report.
    Model files (``model.json`` and the quantisation's JSON beside ``model.onnx``) are read from the
    study folder when there are any.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    src = (
        source
        if isinstance(source, StudySource)
        else open_source(source, study_name=study_name, storage=storage)
    )
    target = Path(out) if out is not None else (src.folder or Path(".")) / "report.html"
    plots = [make(src) for make in ALL_PLOTS]
    status = study_status(src)
    page = render_html(src, status=status, plots=plots, model_files=_model_files(src.folder))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    files = ReportFiles(target, plots=plots)
    if png:
        folder = target.with_name(f"{target.stem}_plots")
        folder.mkdir(parents=True, exist_ok=True)
        for plot in plots:
            if plot.figure is not None:
                path = folder / f"{plot.name}.png"
                plot.figure.savefig(path, format="png", dpi=100, metadata={"Software": None})
                files.pngs.append(path)
    return files


def svg_text(plot: Plot) -> str:
    """The figure as an inline ``<svg>`` element with no XML prologue, metadata or namespace URL."""
    assert plot.figure is not None
    buffer = io.StringIO()
    plot.figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = _SVG_METADATA.sub("", _SVG_PROLOGUE.sub("", buffer.getvalue(), count=1))
    text = _XMLNS.sub("", text)
    return text.replace("<svg", f'<svg role="img" aria-label="{html.escape(plot.title)}"', 1)


def _model_files(folder: Path | None) -> dict[str, dict[str, Any]]:
    """``model.json`` and the other JSON files the export writes beside its models, parsed; a
    file that is not valid JSON is shown as such rather than stopping the report."""
    if folder is None:
        return {}
    found: dict[str, dict[str, Any]] = {}
    onnx_stems = {p.stem for p in folder.glob("*.onnx")}
    for path in sorted(folder.glob("*.json")):
        if path.name == "study.json" or (path.stem not in onnx_stems and path.name != "model.json"):
            continue
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            payload = {"error": f"could not read {path.name}: {exc}"}
        found[path.name] = payload if isinstance(payload, dict) else {"value": payload}
    return found


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return _esc("—" if value is None else value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return _esc(value)


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:  # type: ignore[assignment]
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flatten(payload: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(payload, dict):
        rows: list[tuple[str, Any]] = []
        for key, value in payload.items():
            rows += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(payload, list) and len(payload) > 8:
        shown = ", ".join(str(v) for v in payload[:8])
        return [(prefix, f"{shown}, … ({len(payload)} in all)")]
    return [(prefix, payload)]


def _plot_section(plot: Plot, anchor: str, intro: str) -> str:
    note = f'<p class="note">{_esc(plot.note)}</p>' if plot.note else ""
    body = f"<figure>{svg_text(plot)}</figure>{note}" if plot.figure is not None else note
    return f'<section id="{anchor}"><h2>{_esc(plot.title)}</h2><p>{intro}</p>{body}</section>'


def render_html(
    src: StudySource, *, status: dict[str, Any], plots: list[Plot], model_files: dict[str, dict[str, Any]]
) -> str:
    """The report page from its parts (see :func:`write_report`)."""
    by_name = {p.name: p for p in plots}
    metric = _esc(src.metric)
    c = status["counts"]
    cards = [
        ("best " + src.metric, _num(status["best"]["value"]) if status["best"] else "—"),
        ("complete", c["complete"]),
        ("pruned", c["pruned"]),
        ("failed", c["failed"]),
        ("running", c["running"]),
        ("time in trials", format_duration(status["time"]["trials_seconds"])),
    ]
    if status["budget"]:
        cards.insert(1, ("budget", f"{status['finished']}/{status['budget']}"))
    sections = [
        '<section id="summary"><h2>Summary</h2><div class="cards">'
        + "".join(f'<div class="card">{_esc(k)}<b>{v}</b></div>' for k, v in cards)
        + "</div>"
        + _best_block(status)
        + _export_block(status)
        + "</section>",
        _plot_section(
            by_name["optimization_history"],
            "history",
            f"{metric} of every trial in the order it ran; the line is the best so far.",
        ),
        _plot_section(
            by_name["learning_curves"],
            "curves",
            f"{metric} after each epoch. Pruned trials are dashed and end in a cross where the pruner stopped them.",
        ),
        _plot_section(
            by_name["plugin_comparison"],
            "plugins",
            "Each plugin's best trial (star), its other complete trials (dots; a box over all of them when there are enough), and how many of its trials were pruned or failed.",
        ),
        _plot_section(
            by_name["param_importances"],
            "importances",
            "How much each sampled choice explains the score (optuna.importance.get_param_importances).",
        ),
        _importance_table(by_name["param_importances"]),
        _plot_section(
            by_name["cost_tradeoff"],
            "cost",
            f"{metric} against model size and training time; the Pareto front joins the trials no other trial beats on both.",
        ),
        _classes(src, status),
        '<section id="leaderboard"><h2>Leaderboard</h2>'
        + _leaderboard(src)
        + _unfinished(status)
        + "</section>",
        '<section id="model"><h2>Exported model</h2>' + _model_section(model_files) + "</section>",
    ]
    nav = " ".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (
            ("summary", "Summary"),
            ("history", "History"),
            ("curves", "Learning curves"),
            ("plugins", "Plugins"),
            ("importances", "Importances"),
            ("cost", "Cost"),
            *((("classes", "Classes"),) if '<section id="classes">' in "".join(sections) else ()),
            ("leaderboard", "Leaderboard"),
            ("model", "Model"),
        )
    )
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    where = _esc(status["folder"] or status["storage"])
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>tlsearch report: {_esc(src.study.study_name)}</title><style>{CSS}{CLASSES_CSS}</style></head><body>"
        f"<h1>Study {_esc(src.study.study_name)}</h1>"
        f'<p class="sub">{where} · {metric} ({status["direction"]}) · written {stamp} by tlsearch {__version__}</p>'
        f"<nav>{nav}</nav>" + "".join(sections) + "</body></html>\n"
    )


def _classes(src: StudySource, status: dict[str, Any]) -> str:
    """The best trial's per-class results (:mod:`tlsearch.report._classes`); its worst images are
    read from the data root of the study folder's config (none for a bare storage)."""
    best = status["best"]
    if not best:
        return ""
    root = None
    if src.folder is not None:
        from tlsearch.search.class_attrs import data_root
        from tlsearch.search.study_dir import StudyDir

        root = data_root(StudyDir(src.folder).load_config())
    attrs = src.study.trials[best["trial"]].user_attrs
    return classes_section(attrs, trial=best["trial"], root=root)


def _best_block(status: dict[str, Any]) -> str:
    best = status["best"]
    if not best:
        return '<p class="note">No complete trial yet.</p>'
    rows = [[_esc(k), _esc(v)] for k, v in best["plugins"].items()]
    rows += [[_esc(k), _num(v)] for k, v in tuned_params(best).items()]
    rows += [[_esc(k), _num(v)] for k, v in best["metrics"].items()]
    if best["params"]:
        rows.append(["parameters", _num(best["params"])])
    return f"<h3>Best: trial {best['trial']}</h3><p>{_esc(best['summary'])}</p>" + _table(
        ["", "value"], rows, {1}
    )


def _export_block(status: dict[str, Any]) -> str:
    """The exported model's validation and held-out test scores, and what the soup did and why."""
    export = status.get("export")
    if not export:
        return ""
    metric = status["metric"]
    soup = export.get("soup") or {}
    what = f"soup of trials {soup['ingredients']}" if soup.get("exported") else f"trial {export['trial']}"
    rows = [["validation " + _esc(metric), _num(export["value"])]]
    test = export.get("test")
    if test:
        rows += [[f"test {_esc(k)}", _num(v)] for k, v in test["metrics"].items()]
        rows.append(["test images", str(test["images"])])
        note = (
            "The validation score chose this model among every trial, so it is optimistic; the test "
            "score, of the exported file on images no trial saw, is not."
        )
    else:
        note = (
            "No test split (data.test or data.test_fraction): the validation score chose this model "
            "among every trial, so it is optimistic."
        )
    html = f"<h3>Exported: {_esc(what)}</h3>" + _table(["", "value"], rows, {1})
    html += f'<p class="note">{_esc(note)}</p>'
    if soup:
        html += f"<p>Soup: {_esc(soup['reason'])}.</p>"
        left = [[str(x["trial"]), _esc(x["reason"])] for x in soup.get("left_out", [])]
        tried = [
            [str(x["trial"]), f"{'kept' if x['kept'] else 'left out'}: {metric} with it {_num(x['value'])}"]
            for x in soup.get("tried", [])
        ]
        if tried or left:
            html += _table(["trial", "in the soup?"], tried + [[t, f"not mixed: {r}"] for t, r in left], {0})
    return html


def _importance_table(plot: Plot) -> str:
    if not plot.data:
        return ""
    rows = [[_esc(k), f"{v:.3f}"] for k, v in plot.data.items()]
    return _table(["parameter", "importance"], rows, {1})


def _leaderboard(src: StudySource) -> str:
    rows = leaderboard(src.study)
    if not rows:
        return '<p class="note">No complete trial yet.</p>'
    kinds = ("backbone", "head", "freezing", "regularizers")
    body = [
        [
            str(r["rank"]),
            str(r["trial"]),
            _num(r["value"]),
            *(_esc(r["plugins"].get(k, "")) for k in kinds),
            _num(_lr(src, r["trial"])),
            _num(r["params"]),
            _num(r["seconds"], 3),
        ]
        for r in rows
    ]
    return _table(
        ["#", "trial", src.metric, *kinds, "lr", "parameters", "seconds"], body, {0, 1, 2, 8, 9, 10}
    )


def _lr(src: StudySource, number: int) -> Any:
    return (src.study.trials[number].user_attrs.get("choices") or {}).get("train.lr")


def _unfinished(status: dict[str, Any]) -> str:
    rows = [
        [str(p["trial"]), "pruned", f"after epoch {p['epoch']}" if p["epoch"] is not None else ""]
        for p in status["pruned"]
    ]
    rows += [[str(f["trial"]), "failed", _esc(f["reason"])] for f in status["failures"]]
    rows += [[str(r["trial"]), "running", f"{r['epochs_done']} epoch(s) done"] for r in status["running"]]
    if not rows:
        return ""
    return "<h3>Not complete</h3>" + _table(
        ["trial", "state", "detail"], sorted(rows, key=lambda r: int(r[0])), {0}
    )


def _model_section(files: dict[str, dict[str, Any]]) -> str:
    if not files:
        return (
            '<p class="note">No exported model in the study folder (model.json is written by the export).</p>'
        )
    parts = []
    for name, payload in files.items():
        flat = _flatten(payload)
        first = [kv for kv in flat if kv[0].split(".", 1)[0] in _RESULTS]  # parity and quantisation
        rows = [[_esc(k), _num(v, 6)] for k, v in first + [kv for kv in flat if kv not in first]]
        parts.append(f"<h3>{_esc(name)}</h3>" + _table(["key", "value"], rows))
    return "".join(parts)
