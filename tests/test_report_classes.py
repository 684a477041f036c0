"""The per-class views read from a trial's recorded attributes: ``tlsearch status``'s most confused
pairs, the report's Classes section (heat map, per-class table with AP when recorded, many-class
note) and the worst images' thumbnails (EXIF orientation applied)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial
from PIL import Image

from tlsearch.report import open_source, study_status
from tlsearch.report._classes import classes_section, format_confused, heat_map, thumbnail
from tlsearch.report._status import format_status
from tlsearch.train.class_results import confusion_record

MATRIX = [[8, 2, 0], [5, 5, 0], [0, 1, 3]]
LABELS = ["apple", "pear", "<plum>"]


def _rows(matrix: list[list[int]], labels: list[str]) -> list[dict]:
    rows = []
    for i, (name, row) in enumerate(zip(labels, matrix, strict=True)):
        predicted = sum(r[i] for r in matrix)
        recall = row[i] / sum(row)
        precision = row[i] / predicted if predicted else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "support": sum(row), "precision": precision, "recall": recall, "f1": f1})
    return rows


def test_status_lists_the_most_confused_pairs_with_their_share(tmp_path: Path) -> None:
    """Bug caught: pairs read from another trial than the best, or the share of all images instead of
    the true class's."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    worse = [[10, 0, 0], [0, 10, 0], [0, 9, 1]]
    for value, matrix in ((0.4, worse), (0.9, MATRIX)):
        attrs = {"per_class": _rows(matrix, LABELS), "confusion": matrix, "choices": {}}
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, user_attrs=attrs))
    status = study_status(open_source(url))
    assert [(p["true"], p["predicted"], p["count"]) for p in status["best"]["confused"]] == [
        ("pear", "apple", 5),
        ("apple", "pear", 2),
        ("<plum>", "pear", 1),
    ]
    text = format_status(status)
    assert "most confused (validation, true → predicted):" in text
    assert "pear → apple: 5 (50 %)" in text
    assert "apple → pear: 2 (20 %)" in text
    assert format_confused([]) == []


def test_the_classes_section_has_the_heat_map_the_table_and_escaped_labels() -> None:
    """Bugs caught: rows not normalised (a 10-image class looks worse than a 4-image one), labels
    injected as HTML, the AP column shown without AP values or missing with them."""
    attrs = {"per_class": _rows(MATRIX, LABELS), "confusion": MATRIX}
    page = classes_section(attrs, trial=3, root=None)
    assert page.startswith('<section id="classes">') and "best trial (3)" in page
    assert "&lt;plum&gt;" in page and "<plum>" not in page
    assert "pear → apple: 5 of 10 (50.0 %)" in page  # the cell's tooltip: its share of its row
    assert "&lt;plum&gt; → &lt;plum&gt;: 3 of 4 (75.0 %)" in page
    assert "<th>AP</th>" not in page
    with_ap = [{**r, "ap": 0.5 + i / 10} for i, r in enumerate(_rows(MATRIX, LABELS))]
    page = classes_section({"per_class": with_ap}, trial=0, root=None)
    assert "<th>AP</th>" in page and '<td class="num">0.700</td>' in page
    assert classes_section({}, trial=0, root=None) == ""  # regression: no section


def test_the_heat_map_colours_by_row_share_blue_on_the_diagonal_red_off_it() -> None:
    svg = heat_map([[0.8, 0.2], [0.0, 1.0]], [[8, 2], [0, 4]], labels=["a", "b"])
    fills = [part.split('"')[0] for part in svg.split('fill="')[1:] if part.startswith("#")]
    cells = [f for f in fills if f != "#fff" and f != "#222"][:4]
    (r0, _, b0), (r1, _, b1) = _rgb(cells[0]), _rgb(cells[1])
    assert b0 > r0 and r1 > b1  # correct in blue, confused in red
    assert cells[2] == "#ffffff"  # no image: white
    assert _rgb(cells[3])[0] < r0  # a larger share is darker


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def test_many_classes_draw_no_heat_map_but_say_why_and_list_the_pairs() -> None:
    import torch

    classes = 120
    confusion = torch.eye(classes, dtype=torch.long) * 3
    confusion[5, 7] = 2
    labels = [f"k{i}" for i in range(classes)]
    rows = [{"class": n, "support": 3, "precision": 1.0, "recall": 1.0, "f1": 1.0} for n in labels]
    page = classes_section({"per_class": rows, "confusion": confusion_record(confusion)}, trial=0, root=None)
    assert 'id="confusion"' not in page
    assert "only the 1 largest of 1 confused cells are recorded" in page
    assert "<td>k5</td><td>k7</td>" in page


def test_thumbnails_are_upright_small_jpegs_and_missing_files_are_named(tmp_path: Path) -> None:
    """Bug caught: a phone photo shown on its side (EXIF orientation ignored), a full-size image
    embedded, or a missing file breaking the report."""
    pixels = np.zeros((200, 400, 3), dtype=np.uint8)
    pixels[:, :200] = (255, 0, 0)  # left half red
    pixels[:, 200:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: the stored left side ends up on top
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif)
    data = thumbnail(tmp_path / "phone.jpg")
    assert data is not None
    shown = Image.open(io.BytesIO(base64.b64decode(data)))
    assert shown.format == "JPEG" and shown.size == (64, 128)
    top, bottom = np.asarray(shown)[10, 32], np.asarray(shown)[118, 32]
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]
    worst = [
        {"path": "phone.jpg", "true": "a", "predicted": "b", "probability": 0.01},
        {"path": "gone.jpg", "true": "a", "predicted": "a", "probability": 0.4},
    ]
    page = classes_section({"worst_images": worst}, trial=0, root=tmp_path)
    assert page.count('src="data:image/jpeg;base64,') == 1
    assert "not found" in page and "1 image(s) could not be read" in page
    assert classes_section({"worst_images": worst}, trial=0, root=None).count("data:image") == 0


@pytest.mark.parametrize("bad", [None, [[1, 2]], {"classes": 3}, "x"])
def test_a_confusion_record_of_another_shape_draws_nothing_and_does_not_crash(bad) -> None:
    page = classes_section({"per_class": _rows(MATRIX, LABELS), "confusion": bad}, trial=0, root=None)
    assert 'id="confusion"' not in page and 'id="per-class"' in page
