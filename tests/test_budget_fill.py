"""A warm-start fine-tune fills its share of the study's time budget (``budget_share``): after its
first epoch its planned epochs grow to what fits in that share of the time left, capped, never
below its recipe's, the cosine re-planned to end there; sampled trials, solved probes and studies
without a timeout keep their epochs; a grown trial stays prunable after its grace epochs.

The budget is a fake: ``fit_epochs`` answers how many epochs in all fit (no clock, no sleep)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from tlsearch_builtins.freezing._static import FINETUNE_TRAINING, FullFinetune, LinearProbe

from tests.conftest import decode_shapes
from tests.test_objective_bookkeeping import bench  # noqa: F401  (the real Objective, a fixture)
from tlsearch.config import load_config
from tlsearch.data import DecodedImages
from tlsearch.kinds import PortfolioEntry
from tlsearch.search import objective as objective_module
from tlsearch.search.portfolio import PORTFOLIO_ATTR, TRAINING_ATTR
from tlsearch.testing._tiny import tiny_transfer_model
from tlsearch.train import Trainer, TrainSettings
from tlsearch.train import loop as loop_module
from tlsearch.train.loop import MAX_BUDGET_EPOCHS, budget_epochs

PRUNED = optuna.trial.TrialState.PRUNED


@pytest.fixture(scope="module")
def data(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[DecodedImages, DecodedImages]:
    return decode_shapes(shapes_dir, tmp_path_factory.mktemp("images"))


def _fit(data, *, fitted: int | None, strategy=None, **settings):
    """Train the tiny model with a budget in which ``fitted`` epochs in all fit (None: no
    timeout); returns the result, the epochs ``fit_epochs`` was asked after, and the learning rate
    of each epoch's last step."""
    trainer = Trainer(
        tiny_transfer_model(num_outputs=4, seed=0),
        strategy=strategy or FullFinetune(),
        num_outputs=4,
        settings=TrainSettings(**{"epochs": 3, "batch_size": 8, "lr": 1e-2, "warmup": 0.1, **settings}),
    )
    asked: list[int] = []
    last_lrs: list[float] = []

    def fit_epochs(epoch: int, seconds: float) -> int | None:
        asked.append(epoch)
        assert seconds > 0
        return fitted

    def at_end(epoch: int, metrics: dict[str, float]) -> None:
        assert trainer.optimizer is not None
        last_lrs.append(trainer.optimizer.param_groups[0]["lr"])

    result = trainer.fit(*data, on_epoch_end=at_end, fit_epochs=None if fitted is None else fit_epochs)
    return result, asked, last_lrs


def test_the_rule_grows_to_the_share_of_the_time_left_once_capped_and_never_below_the_plan() -> None:
    assert budget_epochs(41, epoch=0, planned=8, share=0.5) == 21  # 40 more fit: half of them
    assert budget_epochs(41, epoch=0, planned=8, share=1.0) == 41
    assert budget_epochs(10_001, epoch=0, planned=8, share=0.5) == MAX_BUDGET_EPOCHS == 100
    assert budget_epochs(10_001, epoch=0, planned=150, share=0.5) == 150  # the cap never lowers a plan
    assert (
        budget_epochs(11, epoch=0, planned=8, share=0.5) == 8
    )  # half the time left fits 5 more: the recipe's
    assert budget_epochs(5, epoch=0, planned=8, share=0.5) == 5  # not even the recipe fits: down
    assert budget_epochs(41, epoch=1, planned=8, share=0.5) == 8  # after the first epoch: only down
    assert budget_epochs(41, epoch=0, planned=8, share=None) == 8  # no share: only down
    assert budget_epochs(5, epoch=2, planned=8, share=None) == 5


def test_a_budget_share_grows_the_plan_and_its_cosine_ends_there(data) -> None:
    recipe, _, recipe_lrs = _fit(data, fitted=None, budget_share=0.5)
    grown, asked, lrs = _fit(data, fitted=11, budget_share=0.5)  # 10 more fit after epoch 0: 5 of them
    assert len(recipe.history) == 3 and "epochs_fitted" not in recipe.extras
    assert len(grown.history) == 6 and grown.stopped is None and grown.extras["epochs_fitted"] == 6
    assert asked == [0, 1, 2, 3, 4]  # after every epoch but the last (a later re-plan may only shorten)
    assert recipe_lrs[-1] < 0.05 * 1e-2  # the 3-epoch cosine ends at ~0 ...
    assert lrs[2] > 0.5 * 1e-2  # ... the grown one is still high at the recipe's last epoch
    assert lrs[-1] < 0.05 * 1e-2 and lrs == sorted(lrs, reverse=True)  # and ends at ~0 at its own


def test_the_grown_plan_is_capped(data, monkeypatch) -> None:
    monkeypatch.setattr(loop_module, "MAX_BUDGET_EPOCHS", 4)
    result, _, lrs = _fit(data, fitted=10_000, budget_share=0.5)
    assert len(result.history) == 4 and result.extras["epochs_fitted"] == 4
    assert lrs[-1] < 0.05 * 1e-2


def test_a_share_too_small_for_more_keeps_the_recipes_epochs(data) -> None:
    result, _, _ = _fit(data, fitted=4, budget_share=0.5)  # half of 3 more epochs: 1, fewer than 3
    assert len(result.history) == 3 and "epochs_fitted" not in result.extras and result.stopped is None


def test_no_growth_without_a_timeout_a_share_or_for_a_solved_probe(data) -> None:
    assert len(_fit(data, fitted=None, budget_share=0.5)[0].history) == 3  # no deadline
    sampled, asked, _ = _fit(data, fitted=11)  # no share: a sampled trial keeps the study's epochs
    assert len(sampled.history) == 3 and "epochs_fitted" not in sampled.extras and asked == [0, 1]
    probe, asked, _ = _fit(data, fitted=11, strategy=LinearProbe(), budget_share=0.5)
    assert "probe_solver" in probe.extras and len(probe.history) <= 3 and asked == []


def test_only_a_warm_start_entry_sets_a_share(write_study) -> None:
    config = load_config(write_study(training={"epochs": 2}))
    assert TrainSettings.for_trial(config, batch_size=8, lr=1e-3).budget_share is None  # sampled
    tune = TrainSettings.for_trial(config, batch_size=8, lr=1e-3, portfolio=FINETUNE_TRAINING)
    assert (tune.epochs, tune.budget_share) == (8, 0.5)
    for bad in (0, 0.0, 1.5, -0.1, True, "half"):
        with pytest.raises(ValueError, match=r"'x': training budget_share must be a number in \(0, 1\]"):
            PortfolioEntry(name="x", training={"budget_share": bad})
    assert PortfolioEntry(name="x", training={"budget_share": 1}).training["budget_share"] == 1


def test_a_grown_warm_start_trial_is_still_pruned_when_weak_after_its_grace(bench, monkeypatch) -> None:  # noqa: F811
    """The median pruner (with the warm-start grace) stops the grown fine-tune at epoch 4, past its
    recipe's last epoch (2): the epoch callback spares only the *grown* plan's last epoch."""
    monkeypatch.setattr(loop_module, "MAX_BUDGET_EPOCHS", 12)
    monkeypatch.setattr(objective_module, "wall_clock", lambda: 0.0)
    b = bench(space={"freezing": ["full_finetune"]}, training={"epochs": 3}, search={"pruner": "median"})
    b.objective.deadline = 1e12  # a timeout far away: the plan grows to the cap
    for _ in range(2):  # finished trials that are weak until epoch 3, then far above any accuracy
        b.study.add_trial(
            optuna.trial.create_trial(
                value=2.0, intermediate_values={step: (-1.0 if step < 4 else 2.0) for step in range(12)}
            )
        )
    b.study.enqueue_trial({}, user_attrs={PORTFOLIO_ATTR: "tune", TRAINING_ATTR: {"budget_share": 0.5}})
    trial = b.optimize()[-1]
    assert trial.state == PRUNED and sorted(trial.intermediate_values) == [0, 1, 2, 3, 4]
    assert trial.user_attrs["epochs_planned"] == 12


def test_the_live_view_follows_the_grown_plan() -> None:
    import io
    from types import SimpleNamespace

    from tlsearch.cli.console import Console

    choices = {"backbone": "timm", "head": "linear", "freezing": "full_finetune", "train.lr": 2e-3}
    metrics = {"accuracy": 0.5, "epoch_seconds": 0.1}
    with Console(total=2, epochs=3, mode="plain", stream=io.StringIO()) as console:
        tune = SimpleNamespace(number=0, study=None, user_attrs={TRAINING_ATTR: {"epochs": 8}})
        console.event("trial_start", trial=tune, choices=choices)
        console.event("epoch_end", trial=tune, epoch=1, metrics=metrics, epochs=21)  # grown after epoch 0
        assert console.current[0]["epochs"] == 21
        console.event("epoch_end", trial=tune, epoch=2, metrics=metrics)  # another worker's (watch.py)
        assert console.current[0]["epochs"] == 21
