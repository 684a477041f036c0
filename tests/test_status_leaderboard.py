"""``tlsearch status`` shows the trials (the leaderboard ``run`` prints) and takes the study file."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tests.test_status import folder  # noqa: F401  (the fixture: trials 1 (0.9), 5 (0.7), 0 (0.5) complete)
from tlsearch.cli import main


def test_status_prints_the_leaderboard_as_run_does_and_top_cuts_it(folder: Path) -> None:  # noqa: F811
    result = CliRunner().invoke(main, ["status", str(folder)])
    assert result.exit_code == 0, result.output
    rows = [line.strip() for line in result.output.splitlines() if line.strip().startswith("#")]
    assert [r.split()[:3] for r in rows] == [["#1", "trial", "1"], ["#2", "trial", "5"], ["#3", "trial", "0"]]
    assert "accuracy 0.9000" in rows[0] and "full_finetune" in rows[0]

    result = CliRunner().invoke(main, ["status", str(folder), "--top", "2", "--json"])
    assert [r["trial"] for r in json.loads(result.stdout)["leaderboard"]] == [1, 5]


def test_status_takes_the_study_file_as_run_does(folder: Path, monkeypatch) -> None:  # noqa: F811
    study_file = folder.parent / "study.yaml"
    result = CliRunner().invoke(main, ["status", str(study_file), "--out", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["complete"] == 3

    monkeypatch.chdir(folder.parent)  # the default folder, runs/s, does not exist there
    result = CliRunner().invoke(main, ["status", "study.yaml"])
    assert result.exit_code == 2
    assert "no folder 'runs/s' yet" in result.output and "tlsearch run study.yaml" in result.output

    (folder.parent / "runs").mkdir()
    folder.rename(folder.parent / "runs" / "s")
    result = CliRunner().invoke(main, ["status", "study.yaml"])
    assert result.exit_code == 0 and "#1  trial 1" in result.output


def test_out_without_a_study_file_is_refused(folder: Path) -> None:  # noqa: F811
    result = CliRunner().invoke(main, ["status", str(folder), "--out", str(folder)])
    assert result.exit_code == 2 and "--out is for a study file" in result.output
