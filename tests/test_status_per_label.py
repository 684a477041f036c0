"""Per-label AP in ``tlsearch status`` and the report for a multi-label study: read from what the
trial records (``per_class`` rows with ``ap`` and ``threshold``), every label up to 20, else the 20
lowest AP; the mAP and the count shown in a short title, what the rows are in notes under the table;
a label without a validation positive shows no AP."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState, create_trial

from tlsearch.cli import main
from tlsearch.report._classes import classes_section
from tlsearch.report._status import PER_CLASS_ROWS, format_per_class


def _label_rows(n: int) -> list[dict]:
    """``n`` labels: label_00 … with AP rising by label (label_00 the lowest), the last one
    without a validation positive (support 0, AP recorded as 0)."""
    rows = []
    for i in range(n):
        support = 0 if i == n - 1 else 3 + i % 4
        rows.append(
            {
                "class": f"label_{i:02d}",
                "support": support,
                "precision": 0.5,
                "recall": 0.25,
                "f1": 1 / 3,
                "ap": 0.0 if support == 0 else 0.30 + i / 100,
                "threshold": 0.125 + i / 1000,
            }
        )
    return rows


def _study_with(tmp_path: Path, rows: list[dict]) -> str:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="ml", storage=url, direction="maximize")
    study.set_user_attr("metric", "map")
    attrs = {"per_class": rows, "choices": {}, "metrics": {"map": 0.5}}
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs=attrs))
    return url


def _status_text(url: str) -> str:
    result = CliRunner().invoke(main, ["status", url, "--study", "ml"])
    assert result.exit_code == 0, result.output
    return result.output


def test_status_lists_fifty_labels_as_the_twenty_lowest_ap_with_the_map(tmp_path: Path) -> None:
    """Bugs caught: the AP column dropped (the classification table), the many-label cut made by F1
    (all equal here, so the order would be the labels') instead of AP, the label without a positive
    shown with AP 0.000 or ranked as the worst, the mAP counting it."""
    rows = _label_rows(50)
    text = _status_text(_study_with(tmp_path, rows))
    expected_map = sum(r["ap"] for r in rows[:-1]) / 49
    assert f"per label (validation, mAP {expected_map:.3f}, {PER_CLASS_ROWS} of 50 labels):" in text
    assert f"shown: the {PER_CLASS_ROWS} labels with the lowest AP" in text
    assert "1 label(s) without a validation positive: no AP (—), not in the mAP" in text
    assert "support     AP  threshold  precision  recall     f1" in text
    lines = [line.split() for line in text.splitlines() if line.strip().startswith("label_")]
    assert [cells[0] for cells in lines] == [f"label_{i:02d}" for i in range(PER_CLASS_ROWS)]
    assert lines[0][1:4] == ["3", "0.300", "0.125"]  # support, AP, threshold
    assert "label_49" not in text  # no positive: not among the worst AP


def test_status_lists_every_label_of_a_small_set_and_the_one_without_a_positive(tmp_path: Path) -> None:
    """Bug caught: a label without a validation positive shown with AP 0.000 (it has none)."""
    text = _status_text(_study_with(tmp_path, _label_rows(4)))
    assert "per label (validation, mAP 0.310, all 4 labels):" in text
    assert "1 label(s) without a validation positive: no AP (—), not in the mAP" in text
    assert "shown: the" not in text  # every label is shown: no cut to explain
    last = next(line.split() for line in text.splitlines() if line.strip().startswith("label_03"))
    assert last[1:4] == ["0", "—", "0.128"]
    assert format_per_class([]) == []


def test_the_title_of_thirty_labels_fits_in_100_columns_and_keeps_the_facts() -> None:
    """Bugs caught: the explanation put back in the title (it ran past 150 columns with more than
    20 labels); the mAP or the "20 of 30" count dropped from the title; the notes under the table
    lost (the tuned-threshold rule, the label without a positive)."""
    rows = _label_rows(30)
    lines = format_per_class(rows)
    expected_map = sum(r["ap"] for r in rows[:-1]) / 29
    title = lines[0]
    assert len(title) <= 100, title
    assert f"mAP {expected_map:.3f}" in title and f"{PER_CLASS_ROWS} of 30 labels" in title
    assert all(len(line) <= 100 for line in lines), [line for line in lines if len(line) > 100]
    notes = lines[2 + PER_CLASS_ROWS :]
    assert notes == [
        f"        shown: the {PER_CLASS_ROWS} labels with the lowest AP",
        "        precision, recall, F1: at each label's tuned threshold",
        "        1 label(s) without a validation positive: no AP (—), not in the mAP",
    ]
    none_scored = format_per_class([{**r, "support": 0} for r in _label_rows(2)])
    assert none_scored[0] == "      per label (validation, no mAP, all 2 labels):"
    assert none_scored[-1] == "        no label has a validation positive: no AP, no mAP"


def test_the_report_table_gives_ap_and_threshold_per_label() -> None:
    """Bugs caught: the report's multi-label table titled per class without its AP rule, the
    threshold missing, AP 0.000 for a label without a positive."""
    page = classes_section({"per_class": _label_rows(3)}, trial=0, root=None)
    assert "<h3>Per label</h3>" in page and "<h3>Per class</h3>" not in page
    assert "<th>AP</th><th>threshold</th>" in page
    assert '<td class="num">0.310</td><td class="num">0.126</td>' in page  # label_01
    assert page.count("<td>—</td>") == 1  # label_02's AP: no positive


@pytest.mark.slow
def test_status_of_a_real_multilabel_study_shows_each_labels_ap(tmp_path: Path) -> None:
    """A real study (synthetic several-shapes images, one tiny trial), then ``tlsearch status`` on
    its folder: every shape is a row with the AP, threshold and counts the trial recorded."""
    import yaml

    from tlsearch.demo import make_multilabel_shapes
    from tlsearch.search import run_study

    csv = make_multilabel_shapes(tmp_path / "data", n=40, size=32, seed=0)
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "ml",
                "task": "multilabel",
                "data": {"csv": str(csv), "val_fraction": 0.4, "image_size": 32},
                "space": {
                    "backbone": {"timm": {"model": "test_resnet", "weights": "random"}},
                    "head": ["linear"],
                    "freezing": ["full_finetune"],
                },
                "training": {"epochs": 1, "batch_size": 8},
                "search": {"n_trials": 1, "warm_start": False},
                "export": {"enabled": False, "soup": False},
            }
        )
    )
    result = run_study(study, out_dir=tmp_path / "out", progress=False)
    trial = result.study.trials[0]
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("failure")
    out = CliRunner().invoke(main, ["status", str(tmp_path / "out")])
    assert out.exit_code == 0, out.output
    assert "per label (validation, mAP" in out.output
    shown = {line.split()[0]: line.split() for line in out.output.splitlines() if line.startswith("        ")}
    for row in trial.user_attrs["per_class"]:
        cells = shown[row["class"]]
        ap = f"{row['ap']:.3f}" if row["support"] else "—"
        assert cells[1:4] == [str(int(row["support"])), ap, f"{row['threshold']:.3f}"]
