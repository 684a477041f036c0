"""Per-class results as ``tlsearch status`` and the report show them: the most confused pairs,
the row-normalised confusion matrix as an inline SVG heat map, the per-class table and the worst
validation images as embedded thumbnails.

Everything here reads a trial's recorded user attributes (``per_class``, ``confusion``,
``worst_images``: :mod:`tlsearch.train.class_results`), not a model, and imports neither torch nor
optuna. The heat map is hand-written SVG rather than a matplotlib figure: its labels stay text
(legible at any zoom, searchable, readable in the DOM), each cell carries its counts as a tooltip,
and 50 classes draw in a few milliseconds.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: ``tlsearch status`` lists this many of the most confused pairs
STATUS_PAIRS = 5
#: the report lists this many
REPORT_PAIRS = 15
#: thumbnails of the worst images: the longest side, in pixels
THUMBNAIL_SIZE = 128
#: a label longer than this is cut on the heat map's axes (its full name stays in the tooltip)
LABEL_CHARS = 22


@dataclass(frozen=True)
class ConfusedPair:
    """``count`` validation images of class ``true`` predicted as ``predicted``; ``share``: their
    fraction of the true class's images."""

    true: str
    predicted: str
    count: int
    share: float

    def to_dict(self) -> dict[str, Any]:
        return {"true": self.true, "predicted": self.predicted, "count": self.count, "share": self.share}


def confused_pairs(record: Any, *, labels: Sequence[str], limit: int | None = None) -> list[ConfusedPair]:
    """The most confused (true, predicted) pairs of a recorded ``confusion`` (either stored form),
    largest count first (ties: the larger share, then class order); an empty list for a record
    that is neither form or does not match ``labels``."""
    cells, support = _cells(record, classes=len(labels))
    cells.sort(key=lambda c: (-c[2], -c[2] / max(support[c[0]], 1), c[0], c[1]))
    return [
        ConfusedPair(labels[t], labels[p], n, n / support[t] if support[t] else 0.0)
        for t, p, n in cells[:limit]
    ]


def _cells(record: Any, *, classes: int) -> tuple[list[list[int]], list[int]]:
    if isinstance(record, list):
        if len(record) != classes or any(not isinstance(r, list) or len(r) != classes for r in record):
            return [], []
        cells = [
            [t, p, int(n)] for t, row in enumerate(record) for p, n in enumerate(row) if t != p and n > 0
        ]
        return cells, [int(sum(row)) for row in record]
    if isinstance(record, dict) and record.get("classes") == classes:
        support = [int(s) for s in record.get("support") or []]
        cells = [
            [int(t), int(p), int(n)]
            for t, p, n in record.get("cells") or []
            if 0 <= int(t) < classes and 0 <= int(p) < classes
        ]
        if len(support) == classes:
            return cells, support
    return [], []


def normalised_rows(record: Any, *, classes: int) -> list[list[float]] | None:
    """The recorded matrix with each row divided by its class's support (a row of a class without
    validation images stays 0); None when the record is not a full matrix (many classes)."""
    if not isinstance(record, list) or len(record) != classes:
        return None
    rows = []
    for row in record:
        if not isinstance(row, list) or len(row) != classes:
            return None
        total = sum(row)
        rows.append([n / total if total else 0.0 for n in row])
    return rows


def format_confused(pairs: Sequence[dict[str, Any]]) -> list[str]:
    """``tlsearch status`` lines: ``true → predicted: n (x %)``, most confused first."""
    if not pairs:
        return []
    lines = ["      most confused (validation, true → predicted):"]
    for p in pairs:
        lines.append(f"        {p['true']} → {p['predicted']}: {p['count']} ({100 * p['share']:.0f} %)")
    return lines


# --- the report's section -------------------------------------------------------------------

CSS = """
.heat text { font-size: 11px; fill: #222; } .heat .axis { font-size: 12px; font-weight: 600; fill: #444; }
.thumbs { display: flex; flex-wrap: wrap; gap: 0.8rem; }
.thumb { margin: 0; width: 160px; font-size: 0.8rem; }
.thumb img { display: block; width: 128px; height: 128px; object-fit: contain; background: #f6f6f6;
             border: 1px solid #ccc; }
.thumb .missing { width: 128px; height: 128px; border: 1px dashed #bbb; color: #888; display: flex;
                  align-items: center; justify-content: center; }
.thumb figcaption { margin-top: 0.2rem; overflow-wrap: anywhere; }
.thumb .path { color: #777; font-size: 0.75rem; }
.wrong { color: #b00020; }
"""


def classes_section(attrs: dict[str, Any], *, trial: int, root: Path | None) -> str:
    """The report's "Classes" section for the best ``trial``'s user ``attrs``; empty when the trial
    recorded no per-class result (a regression study). ``root``: the data root the worst images'
    paths are relative to (None: thumbnails cannot be drawn, a note says why)."""
    rows = attrs.get("per_class") or []
    confusion = attrs.get("confusion")
    worst = attrs.get("worst_images") or []
    if not rows and confusion is None and not worst:
        return ""
    labels = [str(r["class"]) for r in rows]
    parts = [
        '<section id="classes"><h2>Classes</h2>',
        f"<p>Per-class results of the best trial ({trial}) on the validation images, for the epoch it kept.</p>",
    ]
    matrix = normalised_rows(confusion, classes=len(labels)) if labels else None
    if matrix is not None and isinstance(confusion, list):
        parts.append(
            "<h3>Confusion matrix</h3><p>Rows: the true class, normalised to 1 (each row's share of its "
            "images); columns: the predicted class. Correct predictions are on the blue diagonal, "
            "confusions in red; hover a cell for its counts.</p>"
        )
        parts.append(f'<figure id="confusion">{heat_map(matrix, confusion, labels=labels)}</figure>')
    elif isinstance(confusion, dict) and confusion.get("note"):
        parts.append(f'<p class="note">{_esc(confusion["note"])}; no heat map is drawn.</p>')
    pairs = confused_pairs(confusion, labels=labels, limit=REPORT_PAIRS) if labels else []
    if pairs:
        body = "".join(
            f'<tr><td>{_esc(p.true)}</td><td>{_esc(p.predicted)}</td><td class="num">{p.count}</td>'
            f'<td class="num">{100 * p.share:.1f} %</td></tr>'
            for p in pairs
        )
        parts.append(
            "<h3>Most confused pairs</h3><table><thead><tr><th>true</th><th>predicted</th><th>images</th>"
            f"<th>of the true class</th></tr></thead><tbody>{body}</tbody></table>"
        )
    if rows and any("ap" in r for r in rows):
        parts.append(
            "<h3>Per label</h3><p>Average precision of each label over the validation images (a label "
            "without a validation positive has none and is not in the mAP), the threshold tuned for "
            "its F1, and precision, recall and F1 at that threshold.</p>" + per_class_table(rows)
        )
    elif rows:
        parts.append("<h3>Per class</h3>" + per_class_table(rows))
    if worst:
        parts.append(worst_images(worst, root=root))
    parts.append("</section>")
    return "".join(parts)


def per_class_table(rows: Sequence[dict[str, Any]]) -> str:
    """Support, precision, recall, F1 per class, and AP and the tuned threshold when the rows carry
    them (multi-label; AP ``—`` for a label without a validation positive)."""
    has_ap = any("ap" in r for r in rows)
    has_threshold = any("threshold" in r for r in rows)
    head = ["class", "support", "precision", "recall", "F1"] + (["AP"] if has_ap else [])
    head += ["threshold"] if has_threshold else []
    body = []
    for r in rows:
        cells = [f"<td>{_esc(r['class'])}</td>", f'<td class="num">{int(r["support"])}</td>']
        cells += [f'<td class="num">{float(r[k]):.3f}</td>' for k in ("precision", "recall", "f1")]
        if has_ap:
            ap = r.get("ap") if int(r["support"]) > 0 else None
            cells.append(f'<td class="num">{float(ap):.3f}</td>' if ap is not None else "<td>—</td>")
        if has_threshold:
            cut = r.get("threshold")
            cells.append(f'<td class="num">{float(cut):.3f}</td>' if cut is not None else "<td>—</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return f'<table id="per-class"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def heat_map(matrix: list[list[float]], counts: list[list[int]], *, labels: Sequence[str]) -> str:
    """An inline SVG heat map of the row-normalised ``matrix``: class names as text on both axes,
    cells sized so that 50 classes fit the page's width, each with a tooltip of its counts; shares
    are written in the cells when they are large enough to hold them (up to 20 classes)."""
    n = len(labels)
    cell = max(12, min(36, 860 // max(n, 1)))
    font = min(11, cell - 2)
    shown = [_short(label) for label in labels]
    label_px = int(max((len(s) for s in shown), default=1) * font * 0.62) + 10
    left, top = label_px + 18, label_px + 18
    width, height = left + n * cell + 4, top + n * cell + 4
    out = [
        f'<svg class="heat" role="img" aria-label="confusion matrix, {n} classes" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-family="system-ui, sans-serif">',
        f'<text class="axis" x="{left + n * cell / 2:.0f}" y="12" text-anchor="middle">predicted</text>',
        f'<text class="axis" transform="translate(12 {top + n * cell / 2:.0f}) rotate(-90)" '
        'text-anchor="middle">true</text>',
    ]
    for i, name in enumerate(shown):
        centre = i * cell + cell / 2
        out.append(
            f'<text class="row-label" x="{left - 4}" y="{top + centre:.1f}" text-anchor="end" '
            f'dominant-baseline="central" font-size="{font}"><title>{_esc(labels[i])}</title>{_esc(name)}</text>'
        )
        out.append(
            f'<text class="col-label" transform="translate({left + centre:.1f} {top - 4}) rotate(-90)" '
            f'dominant-baseline="central" font-size="{font}"><title>{_esc(labels[i])}</title>{_esc(name)}</text>'
        )
    for t, row in enumerate(matrix):
        total = sum(counts[t])
        for p, share in enumerate(row):
            colour = _colour(share, diagonal=t == p)
            tip = f"{labels[t]} → {labels[p]}: {counts[t][p]} of {total} ({100 * share:.1f} %)"
            x, y = left + p * cell, top + t * cell
            out.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{colour}" '
                f'stroke="#eee" stroke-width="0.5"><title>{_esc(tip)}</title></rect>'
            )
            if n <= 20 and share >= 0.005:
                ink = "#fff" if share > 0.55 else "#222"
                out.append(
                    f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2:.1f}" text-anchor="middle" '
                    f'dominant-baseline="central" font-size="{min(11, cell // 3)}" fill="{ink}" '
                    f'pointer-events="none">{100 * share:.0f}</text>'
                )
    out.append(
        f'<rect x="{left}" y="{top}" width="{n * cell}" height="{n * cell}" fill="none" stroke="#999"/></svg>'
    )
    return "".join(out)


def _colour(share: float, *, diagonal: bool) -> str:
    """White to dark blue on the diagonal, white to dark red off it; a small confusion stays visible
    (the scale starts at a light tint for any non-zero share)."""
    if share <= 0:
        return "#ffffff"
    strength = 0.12 + 0.88 * min(1.0, share) ** 0.6
    end = (8, 69, 148) if diagonal else (178, 24, 43)
    r, g, b = (round(255 + (e - 255) * strength) for e in end)
    return f"#{r:02x}{g:02x}{b:02x}"


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def worst_images(worst: Sequence[dict[str, Any]], *, root: Path | None) -> str:
    """The worst validation images as embedded JPEG thumbnails (EXIF orientation applied) with
    their true and predicted labels and the probability the model gave the true class."""
    figures = []
    missing = 0
    for w in worst:
        path = Path(str(w.get("path", "")))
        if not path.is_absolute() and root is not None:
            path = root / path
        data = thumbnail(path) if path.is_absolute() or root is not None else None
        missing += data is None
        alt = f"{w.get('path')}: true {w.get('true')}, predicted {w.get('predicted')}"
        image = (
            f'<img src="data:image/jpeg;base64,{data}" alt="{_esc(alt)}">'
            if data is not None
            else f'<div class="missing" title="{_esc(w.get("path"))}">not found</div>'
        )
        wrong = w.get("true") != w.get("predicted")
        figures.append(
            f'<figure class="thumb">{image}<figcaption>true <b>{_esc(w.get("true"))}</b><br>'
            f'predicted <b class="{"wrong" if wrong else ""}">{_esc(w.get("predicted"))}</b><br>'
            f"p(true) {float(w.get('probability', 0.0)):.3g}<br>"
            f'<span class="path">{_esc(w.get("path"))}</span></figcaption></figure>'
        )
    note = ""
    if missing:
        where = (
            f"under the data root {root}"
            if root is not None
            else "without the study folder (a bare storage: the data root is unknown)"
        )
        note = f'<p class="note">{missing} image(s) could not be read {_esc(where)}.</p>'
    return (
        "<h3>Worst-classified images</h3><p>The validation images with the lowest probability of their "
        f'true class, lowest first.</p><div class="thumbs">{"".join(figures)}</div>{note}'
    )


def thumbnail(path: Path, *, size: int = THUMBNAIL_SIZE) -> str | None:
    """``path`` as a base64 JPEG at most ``size`` pixels on its longest side, turned upright by its
    EXIF orientation; None when the file cannot be read as an image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image) or image
            small = upright.convert("RGB")
            small.thumbnail((size, size))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _esc(value: Any) -> str:
    return html.escape(str(value))
