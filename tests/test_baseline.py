"""One line of warning when the best trial is no better than guessing: the majority class for
classification, the mean (R² ≤ 0) for regression; in ``status`` from the study's storage alone."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState, create_trial

from tests.test_status import DISTRIBUTIONS, _choices, folder  # noqa: F401  (the fixture: a study folder)
from tlsearch.cli import main
from tlsearch.data import ImageList
from tlsearch.search.baseline import MAJORITY_ATTR, baseline_warning, majority_class
from tlsearch.search.storage import make_storage


def test_majority_class_is_the_most_frequent_validation_class_and_its_share() -> None:
    images = ImageList([Path(f"{i}.png") for i in range(5)], [1, 0, 1, 1, 2], ["a", "b", "c"])
    assert majority_class(images) == ("b", pytest.approx(0.6))
    assert majority_class(ImageList([Path("x.png")], [[1.0]], None)) is None


@pytest.mark.parametrize(
    ("metrics", "task", "majority", "warns"),
    [
        ({"accuracy": 0.25}, "classification", ["circle", 0.25], True),  # equal is no better
        ({"accuracy": 0.20}, "classification", ["circle", 0.25], True),
        ({"accuracy": 0.26}, "classification", ["circle", 0.25], False),
        ({"accuracy": 0.10}, "classification", None, False),  # baseline unknown: say nothing
        ({"r2": 0.0}, "regression", None, True),
        ({"r2": -0.4}, "regression", None, True),
        ({"r2": 0.08}, "regression", None, False),
    ],
)
def test_warning_only_when_the_best_is_no_better_than_the_baseline(metrics, task, majority, warns) -> None:
    line = baseline_warning(metrics, task=task, majority=majority)
    assert (line is not None) == warns
    if warns:
        assert line.startswith("warning: ") and "\n" not in line
        assert ("'circle' (25.00% of the validation images)" in line) or "predicting the mean" in line


def test_status_warns_when_the_best_is_no_better_than_the_majority_class(folder: Path) -> None:  # noqa: F811
    result = CliRunner().invoke(main, ["status", str(folder)])
    assert "no better than" not in result.output
    study = optuna.load_study(study_name="s", storage=make_storage(str(folder / "study.journal")))
    study.set_user_attr("task", "classification")
    study.set_user_attr(MAJORITY_ATTR, ["circle", 0.95])  # 95 % of the images are circles
    study.add_trial(  # the new best: 93 % accuracy
        create_trial(
            state=TrialState.COMPLETE,
            value=0.93,
            params={"freezing": "linear_probe", "train.lr": 1e-3},
            distributions=DISTRIBUTIONS,
            user_attrs={"choices": _choices("linear_probe", 1e-3), "metrics": {"accuracy": 0.93}},
        )
    )
    result = CliRunner().invoke(main, ["status", str(folder)])
    assert result.exit_code == 0, result.output
    assert "warning: the best trial's accuracy 93.00% is no better than always predicting" in result.output
    assert "'circle' (95.00% of the validation images)" in result.output
