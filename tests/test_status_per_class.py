"""``tlsearch status`` shows the best trial's per-class table from its recorded ``per_class`` rows."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState, create_trial

from tlsearch.report._status import _best, format_per_class


def _rows(n: int) -> list[dict]:
    return [
        {"class": f"c{i}", "support": 10 + i, "precision": 0.5, "recall": 0.5, "f1": i / n} for i in range(n)
    ]


def test_the_table_lists_each_class_with_support_precision_recall_f1() -> None:
    lines = format_per_class(_rows(3))
    assert "per class (validation)" in lines[0]
    assert lines[1].split() == ["class", "support", "precision", "recall", "f1"]
    assert lines[2].split() == ["c0", "10", "0.500", "0.500", "0.000"]
    assert len(lines) == 5


def test_with_many_classes_the_table_shows_the_lowest_f1_ones() -> None:
    """Bug caught: 50 classes printed in full, or the best ones kept instead of the worst."""
    lines = format_per_class(_rows(50), limit=5)
    assert "the 5 lowest F1 of 50" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["c0", "c1", "c2", "c3", "c4"]


def test_the_best_trial_carries_its_recorded_per_class_rows() -> None:
    """Bug caught: the table read from another trial than the best."""
    study = optuna.create_study(direction="maximize")
    for value, rows in ((0.5, _rows(2)), (0.9, _rows(3))):
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE, value=value, user_attrs={"per_class": rows, "choices": {}}
            )
        )
    best = _best(study)
    assert best is not None and best["per_class"] == _rows(3)
    assert format_per_class([]) == []
