"""The speed settings of a study's ``training`` section reach its trials."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlsearch.search import run_study


@pytest.mark.slow
def test_a_study_can_stream_its_data_skip_the_feature_cache_and_refuse_to_compile(
    write_study, tmp_path: Path
):
    study = write_study(
        space={"freezing": ["linear_probe"]},
        training={
            "data_placement": "stream",
            "loader_workers": 0,
            "feature_cache": False,
            "compile": "never",
        },
        search={"n_trials": 1},
    )
    (trial,) = run_study(study, out_dir=tmp_path / "out", progress=False).study.trials
    speed = trial.user_attrs["speed"]
    assert trial.user_attrs["feature_cache"] is False  # a linear probe, which would use it by default
    assert speed["data_placement"] == "stream"
    assert speed["compile"] is False and speed["compile_reason"] == "compile: never"


@pytest.mark.slow
def test_by_default_a_linear_probe_trains_on_cached_features(write_study, tmp_path: Path):
    study = write_study(space={"freezing": ["linear_probe"]}, search={"n_trials": 1})
    (trial,) = run_study(study, out_dir=tmp_path / "out", progress=False).study.trials
    assert trial.user_attrs["feature_cache"] is True
    assert trial.user_attrs["speed"]["data_placement"] in ("features", "resident")
