"""The settings of a study's ``training`` section (speed, warm-up, clipping, the lr range) reach its trials."""

from __future__ import annotations

import inspect
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from tlsearch.config import Range, TrainingSettings, load_config, resolve_space
from tlsearch.errors import ConfigError
from tlsearch.registry import get_plugin_manager
from tlsearch.search import prepare, run_study
from tlsearch.search.objective import trial_batch_size
from tlsearch.search.sampling import sample_choices
from tlsearch.train import TrainSettings


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


@pytest.mark.parametrize(
    ("training", "fragments"),
    [
        ({"warmup": 1.5}, ["training.warmup", "[0, 1)", "1.5"]),
        ({"warmup": {"low": 0.0, "high": 1.0}}, ["training.warmup", "[0, 1)"]),
        ({"clip_grad_norm": 0}, ["training.clip_grad_norm", "must be > 0", "got 0"]),
    ],
)
def test_bad_warmup_or_clip_is_a_config_error(write_study, tmp_path: Path, training, fragments) -> None:
    study = write_study(training=training)
    with pytest.raises(ConfigError) as err:
        prepare(study, out_dir=tmp_path / "out")
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_warmup_and_clip_are_searched_like_lr_and_reach_the_trial_settings(write_study) -> None:
    study = write_study(
        training={
            "warmup": {"low": 0.01, "high": 0.2},
            "clip_grad_norm": {"low": 0.5, "high": 5.0, "log": True},
        }
    )
    config = load_config(study)
    space = resolve_space(config, get_plugin_manager().registry)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    choices = sample_choices(trial, space)
    assert 0.01 <= choices["train.warmup"] <= 0.2 and 0.5 <= choices["train.clip_grad_norm"] <= 5.0
    assert {"train.warmup", "train.clip_grad_norm"} <= set(trial.params)  # Optuna searches them
    settings = TrainSettings.for_trial(config, batch_size=8, lr=1e-3, choices=choices)
    assert (settings.warmup, settings.clip_grad_norm) == (
        choices["train.warmup"],
        choices["train.clip_grad_norm"],
    )


def test_fixed_warmup_and_clip_are_not_searched(write_study) -> None:
    config = load_config(write_study(training={"warmup": 0.1, "clip_grad_norm": 1.0}))
    choices = sample_choices(
        optuna.create_study().ask(), resolve_space(config, get_plugin_manager().registry)
    )
    assert "train.warmup" not in choices and "train.clip_grad_norm" not in choices
    settings = TrainSettings.for_trial(config, batch_size=8, lr=1e-3, choices=choices)
    assert (settings.warmup, settings.clip_grad_norm) == (0.1, 1.0)


def test_default_lr_ranges_suit_fine_tuning(write_study) -> None:
    """AdamW: 1e-5 … 3e-3 (fine-tuning pretrained weights); SGD: 1e-4 … 1e-1. Defaults: 5% warm-up, no clip."""
    raw = yaml.safe_load(write_study().read_text())
    del raw["training"]["lr"]
    for optimizer, (low, high) in (("adamw", (1e-5, 3e-3)), ("sgd", (1e-4, 1e-1))):
        training = TrainingSettings.model_validate({**raw["training"], "optimizer": optimizer})
        assert (training.lr.low, training.lr.high, training.lr.log) == (low, high, True)  # type: ignore[union-attr]
    assert (training.warmup, training.clip_grad_norm) == (0.05, None)
    assert TrainingSettings.model_validate({"optimizer": "sgd", "lr": 0.5}).lr == 0.5


def test_the_trial_settings_defaults_are_the_study_files(write_study) -> None:
    """Bug caught: a default changed in ``config.TrainingSettings`` but not in the loop's settings (the
    two definitions drifting apart): a study that sets nothing trains with the same values as a bare
    ``TrainSettings()``, and every study setting of the same name reaches the trial's settings."""
    study_defaults = TrainingSettings()
    bare = TrainSettings()
    shared = [name for name in TrainingSettings.model_fields if hasattr(bare, name)]
    assert len(shared) >= 15
    for name in shared:
        value = getattr(study_defaults, name)
        if not isinstance(value, (Range, list)):  # a searched default (lr) has no single value
            assert getattr(bare, name) == value, name
    config = load_config(write_study(training={"epochs": 4, "patience": 2, "precision": "fp32"}))
    settings = TrainSettings.for_trial(config, batch_size=8, lr=1e-3, choices={})
    assert (settings.epochs, settings.patience, settings.precision) == (4, 2, "fp32")
    assert settings.select_metric == config.metric


def test_a_trial_without_a_searched_setting_takes_its_default(write_study) -> None:
    """Bugs caught: the defaults a trial made without the searched magnitude / erasing / augment
    takes (RandAugment's 9, no erasing, the list's first) changed; the kept epoch not chosen by
    the study's metric; a retry's recorded choices ignored for its batch size."""
    config = load_config(
        write_study(
            training={
                "randaugment_magnitude": {"low": 5, "high": 15},
                "random_erasing": {"low": 0.1, "high": 0.5},
                "augment": ["randaugment", "none"],
                "batch_size": [16, 4],
            }
        )
    )
    settings = TrainSettings.for_trial(config, batch_size=8, lr=1e-3, choices={})
    assert (settings.randaugment_magnitude, settings.random_erasing) == (9, 0.0)
    assert settings.augment == "randaugment"
    assert settings.select_metric == config.metric is not None
    trial = optuna.create_study().ask()
    assert trial_batch_size(config, trial) == 16  # nothing sampled: the list's first
    trial.set_user_attr("choices", {"train.batch_size": 4})  # e.g. enqueued for a rerun
    assert trial_batch_size(config, trial) == 4


def test_a_warm_start_entry_sets_what_the_study_file_leaves_unset(write_study) -> None:
    """Bugs caught: a portfolio entry's ``ema``/``warmup`` ignored, or overriding the study file's
    own value; its ``epochs`` lowering the study's instead of only raising it."""
    entry = {"ema": 0.99, "warmup": 0.2, "epochs": 6}
    unset = load_config(write_study(training={"epochs": 3}))
    settings = TrainSettings.for_trial(unset, batch_size=8, lr=1e-3, choices={}, portfolio=entry)
    assert (settings.ema, settings.warmup, settings.epochs) == (0.99, 0.2, 6)
    own = load_config(write_study(training={"epochs": 9, "ema": 0.9, "warmup": 0.0}))
    settings = TrainSettings.for_trial(own, batch_size=8, lr=1e-3, choices={}, portfolio=entry)
    assert (settings.ema, settings.warmup, settings.epochs) == (0.9, 0.0, 9)


def test_a_bare_trial_settings_trains_at_adamws_own_default_lr() -> None:
    """Bug caught: the lr of a ``TrainSettings`` built without one (a script or a plugin's test
    driving the Trainer directly, as the benchmarks do) drifting from torch's AdamW default, the documented 1e-3."""
    assert TrainSettings().lr == inspect.signature(torch.optim.AdamW).parameters["lr"].default == 1e-3


def test_settings_built_without_an_lr_take_torchs_adamw_default() -> None:
    """Bug caught: the documented default learning rate (1e-3, torch's AdamW default) changed, so
    a Trainer built without a sampled lr trains at another step size."""
    adamw_default = inspect.signature(torch.optim.AdamW).parameters["lr"].default
    assert TrainSettings().lr == adamw_default == 1e-3
