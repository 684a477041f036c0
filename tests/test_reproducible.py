"""A study's trials are reproducible: random initialisation comes from the study's and the trial's
seeds, not from whatever ran before in the process."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from tlsearch.search import run_study


def _trials(study_file: Path, out: Path) -> list[optuna.trial.FrozenTrial]:
    result = run_study(study_file, out_dir=out, progress=False)
    return sorted(result.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)


@pytest.mark.slow
def test_the_same_study_gives_the_same_trials_whatever_ran_before(write_study, tmp_path: Path) -> None:
    study_file = write_study(search={"n_trials": 2, "seed": 3, "pruner": "none"})
    torch.rand(17)  # the global generator in one state ...
    first = _trials(study_file, tmp_path / "a")
    torch.rand(1000)  # ... and in another
    second = _trials(study_file, tmp_path / "b")
    assert len(first) == len(second) == 2
    for a, b in zip(first, second, strict=True):
        assert a.params == b.params
        assert _metrics(a) == _metrics(b)  # every epoch's metrics, exactly


def _metrics(trial: optuna.trial.FrozenTrial) -> list[dict[str, float]]:
    return [{k: v for k, v in epoch.items() if k != "epoch_seconds"} for epoch in trial.user_attrs["history"]]


@pytest.mark.slow
def test_a_random_weight_backbone_is_one_feature_cache_entry_for_every_trial(write_study, tmp_path) -> None:
    """Linear probes of a random-weight backbone see the same network in every trial, so only the
    first computes its features (before, each trial drew new weights and missed the cache)."""
    study_file = write_study(space={"freezing": ["linear_probe"]}, search={"n_trials": 3, "pruner": "none"})
    trials = _trials(study_file, tmp_path / "out")
    hits = [t.user_attrs["speed"]["feature_cache"]["hit"] for t in trials]
    keys = {t.user_attrs["speed"]["feature_cache"]["key"] for t in trials}
    assert hits == [False, True, True]
    assert len(keys) == 1


def test_a_requeued_trial_reruns_with_its_own_seed(write_study, tmp_path: Path) -> None:
    """A trial requeued after Ctrl-C (or a lost worker) gets a new trial number; it keeps the seed of
    the trial it retries, so the same parameters train exactly the same way (before, the seed came
    from the trial number)."""
    from tlsearch.search.recovery import requeue

    study_file = write_study(
        space={"freezing": ["full_finetune"]},
        training={"epochs": 1},
        search={"n_trials": 1, "pruner": "none"},
    )
    first = run_study(study_file, out_dir=tmp_path / "out", progress=False).study
    original = first.trials[0]
    requeue(first, original, reason="interrupted")  # what Ctrl-C does to the running trial
    result = run_study(study_file, out_dir=tmp_path / "out", n_trials=2, progress=False)
    retry = result.study.trials[1]
    assert retry.user_attrs["retry_of"] == 0 and retry.params == original.params
    assert retry.user_attrs["seed"] == original.user_attrs["seed"] == 0
    assert _metrics(retry) == _metrics(original)
