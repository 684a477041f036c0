"""The CLI refuses what it cannot do as asked, at once and with exit 2: a trial number the study has
not completed, two output formats at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.test_status import folder  # noqa: F401  (the fixture: trials 0, 1, 5 complete; 2 pruned; 3, 4 failed; 6 running)
from tlsearch.cli import main


@pytest.mark.parametrize(
    ("number", "says"),
    [
        ("99", "has no trial 99"),
        ("-4", "has no trial -4"),  # not Python's study.trials[-4], which is trial 3
        ("2", "trial 2 of study 's' is pruned, not complete"),
        ("3", "trial 3 of study 's' is fail, not complete"),
        ("6", "trial 6 of study 's' is running, not complete"),
    ],
)
def test_export_refuses_a_trial_that_is_not_complete_naming_the_complete_ones(
    folder: Path,  # noqa: F811
    number: str,
    says: str,
) -> None:
    result = CliRunner().invoke(main, ["export", str(folder), "--trial", number])
    assert result.exit_code == 2, result.output
    assert says in result.output and "complete trials: 0, 1, 5" in result.output
    assert "Traceback" not in result.output and not (folder / "model.onnx").exists()


def test_predict_refuses_json_and_csv_together(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read: the options are refused first")
    result = CliRunner().invoke(main, ["predict", str(model), str(tmp_path), "--json", "--csv"])
    assert result.exit_code == 2
    assert "--json and --csv do not go together" in result.output
