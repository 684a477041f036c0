"""The warm-start fine-tune's own recipe (PortfolioEntry.training: at least 8 epochs, warm-up, EMA)
and the budget rule for epochs (a study's timeout re-plans a trial's schedule to end there)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from tlsearch_builtins.freezing._static import FINETUNE_TRAINING, FullFinetune

import tlsearch.search.objective as objective_module
from tests.conftest import decode_shapes
from tlsearch.config import load_config, resolve_space
from tlsearch.data import DecodedImages
from tlsearch.kinds import PortfolioEntry
from tlsearch.registry import get_plugin_manager
from tlsearch.search import run_study
from tlsearch.search.portfolio import PORTFOLIO_ATTR, TRAINING_ATTR, warm_start
from tlsearch.testing._tiny import tiny_transfer_model
from tlsearch.train import Trainer, TrainSettings

COMPLETE = optuna.trial.TrialState.COMPLETE


def test_an_entry_may_set_only_its_trials_epochs_ema_and_warmup() -> None:
    with pytest.raises(
        ValueError, match=r"'x': training sets \['lr'\]; valid: epochs, ema, warmup, budget_share"
    ):
        PortfolioEntry(name="x", training={"lr": 1e-3})
    with pytest.raises(ValueError, match=r"'x': training epochs must be an int >= 1 but got 0"):
        PortfolioEntry(name="x", training={"epochs": 0})
    assert (
        FullFinetune.portfolio[0].training
        == FINETUNE_TRAINING
        == {"epochs": 8, "warmup": 0.1, "ema": 0.999, "budget_share": 0.5}
    )


def test_the_entrys_settings_raise_epochs_and_fill_only_what_the_study_leaves_unset(write_study) -> None:
    entry = {"epochs": 8, "warmup": 0.1, "ema": 0.999}
    config = load_config(write_study(training={"epochs": 2}))
    settings = TrainSettings.for_trial(config, batch_size=8, lr=1e-3, portfolio=entry)
    assert (settings.epochs, settings.warmup, settings.ema) == (8, 0.1, 0.999)
    plain = TrainSettings.for_trial(config, batch_size=8, lr=1e-3)  # a sampled trial: the study's
    assert (plain.epochs, plain.warmup, plain.ema) == (2, 0.05, None)
    own = load_config(write_study(training={"epochs": 20, "warmup": 0.0, "ema": None}))
    settings = TrainSettings.for_trial(own, batch_size=8, lr=1e-3, portfolio=entry)
    assert (settings.epochs, settings.warmup, settings.ema) == (20, 0.0, None)  # the study's own win


def test_warm_start_enqueues_the_fine_tunes_recipe_but_not_the_probes(write_study) -> None:
    config = load_config(write_study(search={"n_trials": 4, "warm_start": True}))
    space = resolve_space(config, get_plugin_manager().registry)
    study = optuna.create_study(direction="maximize")
    warm_start(study, config=config, space=space)
    attrs = {t.user_attrs[PORTFOLIO_ATTR]: t.user_attrs for t in study.get_trials(deepcopy=False)}
    assert attrs["finetune_full_finetune_label_smoothing"][TRAINING_ATTR] == FINETUNE_TRAINING
    assert TRAINING_ATTR not in attrs["linear_probe"]


def test_the_warm_start_fine_tune_trains_its_entrys_epochs_with_ema(write_study, tmp_path: Path) -> None:
    path = write_study(
        training={"epochs": 1},
        search={"n_trials": 4, "warm_start": True, "pruner": "none"},  # 2 warm-start entries
    )
    study = run_study(path, out_dir=tmp_path / "out", n_trials=2, progress=False).study
    by_name = {t.user_attrs[PORTFOLIO_ATTR]: t for t in study.trials}
    tune = by_name["finetune_full_finetune_label_smoothing"]
    assert tune.state == COMPLETE and tune.user_attrs["epochs_run"] == 8
    assert tune.user_attrs["ema"]["decay"] == 0.999
    assert by_name["linear_probe"].user_attrs["epochs_run"] == 1  # the study's epochs


@pytest.fixture(scope="module")
def data(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[DecodedImages, DecodedImages]:
    return decode_shapes(shapes_dir, tmp_path_factory.mktemp("images"))


def _lrs(data, fit_epochs) -> tuple[list[float], object]:
    trainer = Trainer(
        tiny_transfer_model(num_outputs=4, seed=0),
        strategy=FullFinetune(),
        num_outputs=4,
        settings=TrainSettings(epochs=6, batch_size=8, lr=1e-2, warmup=0.0),
    )
    lrs: list[float] = []

    def at_start(epoch: int) -> None:
        assert trainer.optimizer is not None
        lrs.append(trainer.optimizer.param_groups[0]["lr"])

    result = trainer.fit(*data, on_epoch_start=at_start, fit_epochs=fit_epochs)
    return lrs, result


def test_a_budget_that_fits_fewer_epochs_re_plans_the_cosine_to_end_there(data) -> None:
    calls: list[int] = []

    def fit_epochs(epoch: int, seconds: float) -> int:
        calls.append(epoch)
        assert seconds > 0
        return 3  # three epochs in all fit the time left

    planned, full = _lrs(data, None)
    fitted, result = _lrs(data, fit_epochs)
    assert len(full.history) == 6 and full.stopped is None
    assert len(result.history) == 3 and result.stopped == "timeout"
    assert result.extras["epochs_fitted"] == 3 and calls == [0, 1]
    assert fitted[1] == planned[1]  # the first epoch ran on the old plan
    assert fitted[2] < planned[2] / 2  # then the cosine decays over 3 epochs, not 6


def test_the_studys_timeout_fits_a_trials_epochs_to_the_time_left(write_study, tmp_path, monkeypatch) -> None:
    clock: dict[str, float] = {}
    real = objective_module.wall_clock

    def on_event(name: str, **kw) -> None:
        if name == "epoch_end" and kw["epoch"] == 0:  # from now on, 2.5 epochs' time is left
            clock["now"] = kw["trial"].study.user_attrs["deadline"] - 2.5 * kw["metrics"]["epoch_seconds"]

    monkeypatch.setattr(objective_module, "wall_clock", lambda: clock.get("now") or real())
    path = write_study(
        space={"freezing": ["full_finetune"], "regularizers": {}},
        training={"epochs": 6, "lr": 1e-2},
        search={"n_trials": 1, "timeout": 3600, "pruner": "none"},
    )
    (trial,) = run_study(path, out_dir=tmp_path / "out", progress=False, on_event=on_event).study.trials
    assert trial.state == COMPLETE and trial.user_attrs["stopped"] == "timeout"
    assert trial.user_attrs["epochs_run"] == 3  # the first, then the 2 that fit
    assert trial.user_attrs["speed"]["epochs_fitted"] == 3


def test_the_console_shows_a_warm_start_trials_own_epochs() -> None:
    import io
    from types import SimpleNamespace

    from tlsearch.cli.console import Console

    choices = {"backbone": "timm", "head": "linear", "freezing": "full_finetune", "train.lr": 2e-3}
    with Console(total=2, epochs=3, mode="plain", stream=io.StringIO()) as console:
        tune = SimpleNamespace(number=0, study=None, user_attrs={TRAINING_ATTR: {"epochs": 8}})
        console.event("trial_start", trial=tune, choices=choices)
        sampled = SimpleNamespace(number=1, study=None, user_attrs={})
        console.event("trial_start", trial=sampled, choices=choices)
        assert console.current[0]["epochs"] == 8 and console.current[1]["epochs"] == 3
