"""The training recipe as searched settings: optimizer, batch size, augmentation policy, its magnitude
and erasing, EMA, each fixed or searched (a list: categorical), reaching the trial's real trainer."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner

from tlsearch.cli import main
from tlsearch.config import TrainingSettings as TrainingSettings_
from tlsearch.config import load_config, resolve_space
from tlsearch.errors import ConfigError
from tlsearch.registry import get_plugin_manager
from tlsearch.search import prepare
from tlsearch.search.objective import trial_batch_size
from tlsearch.search.sampling import sample_choices
from tlsearch.space import Categorical, Fixed
from tlsearch.testing import decoded_images, synthetic_images, tiny_transfer_model
from tlsearch.train import Trainer, TrainSettings
from tlsearch.train.optim import no_weight_decay


def _space(write_study, **training):  # type: ignore[no-untyped-def]
    config = load_config(write_study(training=training))
    return config, resolve_space(config, get_plugin_manager().registry)


def _trials(space, n: int = 24) -> list[tuple[optuna.Trial, dict]]:  # type: ignore[no-untyped-def]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, sample_choices(trial, space)))
    return out


RECIPE = {
    "optimizer": ["adamw", "sgd"],
    "batch_size": [8, 16],
    "augment": ["crop_flip", "trivial", "randaugment"],
    "randaugment_magnitude": {"low": 5, "high": 15},
    "random_erasing": {"low": 0.0, "high": 0.25},
    "ema": [None, 0.99],
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
}


def test_listed_settings_are_searched_and_reach_the_trial_settings(write_study) -> None:
    """Bugs caught: a list not becoming a categorical; a sampled value not reaching TrainSettings."""
    config, space = _space(write_study, **RECIPE)
    assert space.optimizer == Categorical(("adamw", "sgd")) and space.ema == Categorical((None, 0.99))
    seen: dict[str, set] = {key: set() for key in ("optimizer", "batch_size", "augment", "ema")}
    for trial, choices in _trials(space):
        assert {"train.optimizer", "train.batch_size", "train.augment", "train.ema"} <= set(trial.params)
        settings = TrainSettings.for_trial(
            config, batch_size=trial_batch_size(config, trial), lr=choices["train.lr"], choices=choices
        )
        assert settings.optimizer == choices["train.optimizer"]
        assert settings.batch_size == choices["train.batch_size"] in (8, 16)
        assert settings.augment == choices["train.augment"]
        assert settings.ema == choices["train.ema"]
        assert settings.random_erasing == choices["train.random_erasing"] <= 0.25
        if choices["train.augment"] == "randaugment":
            assert settings.randaugment_magnitude == choices["train.randaugment_magnitude"]
            assert 5 <= settings.randaugment_magnitude <= 15
        else:  # the magnitude is sampled only where it means something
            assert "train.randaugment_magnitude" not in trial.params
        for key in seen:
            seen[key].add(getattr(settings, key))
    assert all(len(values) > 1 for values in seen.values()), seen


def test_fixed_settings_are_not_searched_and_keep_todays_defaults(write_study) -> None:
    """Bug caught: a study that sets none of the new settings getting new Optuna parameters
    (its resumed trials would no longer match) or a different recipe."""
    config, space = _space(write_study)
    (trial, choices), *_ = _trials(space, 1)
    assert not any(k.startswith("train.") and k != "train.lr" for k in trial.params)
    assert space.optimizer == Fixed("adamw") and space.augment == Fixed("crop_flip")
    settings = TrainSettings.for_trial(config, batch_size=16, lr=1e-3, choices=choices)
    assert (settings.optimizer, settings.augment, settings.ema, settings.random_erasing) == (
        "adamw",
        "crop_flip",
        None,
        0.0,
    )
    assert load_config(write_study(training={"augment": False})).training.augment == "none"


def test_a_searched_optimizer_takes_its_own_lr_range_unless_the_study_gives_one(write_study) -> None:
    """SGD's steps are ~30× AdamW's. Bug caught: SGD trials sampled from AdamW's range (too small
    to move) or the other way round."""
    path = write_study(training={"optimizer": ["adamw", "sgd"]})
    raw = yaml.safe_load(path.read_text())
    del raw["training"]["lr"]  # the tiny study sets one; without it each optimizer has its default
    path.write_text(yaml.safe_dump(raw))
    space = resolve_space(load_config(path), get_plugin_manager().registry)
    optimizers = set()
    for trial, choices in _trials(space):
        optimizer = choices["train.optimizer"]
        optimizers.add(optimizer)
        if optimizer == "sgd":
            assert 1e-4 <= choices["train.lr"] == trial.params["train.lr.sgd"] <= 1e-1
            assert "train.lr" not in trial.params
        else:
            assert 1e-5 <= choices["train.lr"] == trial.params["train.lr"] <= 3e-3
    assert optimizers == {"adamw", "sgd"}
    _, given = _space(write_study, optimizer=["adamw", "sgd"])  # the study's own lr: one range for both
    assert given.lr_by_optimizer == {}
    one = TrainingSettings_.model_validate({"optimizer": ["sgd"]})  # a list of one is that optimizer, fixed
    assert one.optimizer == "sgd" and (one.lr.low, one.lr.high) == (1e-4, 1e-1)  # type: ignore[union-attr]


def test_an_out_of_memory_retry_halves_the_sampled_batch_size(write_study) -> None:
    """Bug caught: the retry's halved batch size overridden by the sampled one (the retry fails again)."""
    config, space = _space(write_study, batch_size=[8, 64])
    study = optuna.create_study()
    study.enqueue_trial({"train.batch_size": 64}, user_attrs={"batch_size": 32})
    study.enqueue_trial({"train.batch_size": 64})
    for expected in (32, 64):
        trial = study.ask()
        sample_choices(trial, space)
        assert trial_batch_size(config, trial) == expected


def test_the_trainer_builds_the_searched_optimizer_with_its_groups() -> None:
    """The real optimizer of a trial: SGD with Nesterov momentum 0.9, the layer-decay strategy's
    per-group multipliers and the no-decay set surviving. Bugs caught: the searched optimizer
    ignored (AdamW built); the multipliers or the no-decay split lost on the SGD path."""
    registry = get_plugin_manager().registry
    strategy = registry.get("freezing", "layer_decay").cls(decay=0.5)
    images, labels = synthetic_images(16, size=32, num_classes=3)
    model = tiny_transfer_model(num_outputs=3)
    data = decoded_images(images, labels, model.data_config)
    settings = TrainSettings(
        epochs=1, batch_size=8, lr=0.1, optimizer="sgd", warmup=0.0, scheduler="constant"
    )
    trainer = Trainer(model, strategy=strategy, num_outputs=3, settings=settings)
    seen: list[torch.optim.Optimizer] = []
    trainer.fit(data, data, on_epoch_start=lambda epoch: seen.append(trainer.optimizer))  # type: ignore[arg-type]
    (optimizer,) = seen
    assert type(optimizer) is torch.optim.SGD
    assert all(pg["momentum"] == 0.9 and pg["nesterov"] for pg in optimizer.param_groups)
    scales = {pg["name"]: pg["lr"] / 0.1 for pg in optimizer.param_groups}
    groups = strategy.setup(model)
    assert scales == {g.name: pytest.approx(g.lr_scale) for g in groups}
    assert len(set(scales.values())) > 2  # the layer-wise multipliers differ by depth
    exempt = no_weight_decay(model)
    for pg in optimizer.param_groups:
        if pg["weight_decay"] > 0:
            assert not any(id(p) in exempt for p in pg["params"])


@pytest.mark.parametrize(
    ("training", "fragments"),
    [
        ({"optimizer": "adam"}, ["training.optimizer", "'adam'", "valid choices: adamw, sgd"]),
        ({"optimizer": ["adamw", "rmsprop"]}, ["training.optimizer", "'rmsprop'", "adamw, sgd"]),
        ({"optimizer": []}, ["training.optimizer", "empty list"]),
        ({"batch_size": 0}, ["training.batch_size", "[1, 65536]", "0"]),
        ({"batch_size": [16, 16]}, ["training.batch_size", "lists a value twice"]),
        ({"batch_size": [16, "big"]}, ["training.batch_size", "'big'"]),
        ({"ema": 1.0}, ["training.ema", "(0, 1)", "1.0"]),
        ({"ema": [None, 2]}, ["training.ema", "(0, 1)"]),
    ],
)
def test_bad_recipe_settings_are_config_errors(write_study, tmp_path: Path, training, fragments) -> None:
    study = write_study(training=training)
    with pytest.raises(ConfigError) as err:
        prepare(study, out_dir=tmp_path / "out")
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
    assert not (tmp_path / "out").exists()


def test_cli_exits_2_on_a_bad_optimizer(write_study, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["run", str(write_study(training={"optimizer": "lion"})), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2, result.output
    assert "'lion'" in result.output and "adamw, sgd" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_a_study_searching_the_whole_recipe_runs_every_trial(write_study, tmp_path: Path) -> None:
    """Every searched setting together in real trials: SGD and AdamW, per-image policies, erasing,
    EMA, two batch sizes; every trial completes and records what it ran with."""
    from tlsearch.search import run_study

    study = write_study(
        space={"freezing": ["full_finetune"], "regularizers": {}},
        training={**RECIPE, "epochs": 1},
        search={"n_trials": 3, "sampler": "random"},
    )
    trials = run_study(study, out_dir=tmp_path / "out", progress=False).study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in trials:
        choices = trial.user_attrs["choices"]
        assert {"train.optimizer", "train.augment", "train.batch_size", "train.ema"} <= set(choices)
        assert ("ema" in trial.user_attrs) == (choices["train.ema"] is not None)
