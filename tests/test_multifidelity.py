"""Multi-fidelity: epochs are the budget; the pruner presets stop weak trials after one or two epochs;
multi-objective studies are not pruned; cost breaks ties."""

from __future__ import annotations

from datetime import datetime, timedelta

import optuna
import pytest

from tlsearch.config import parse_config
from tlsearch.search.portfolio import PORTFOLIO_ATTR
from tlsearch.search.pruning import MIN_PORTFOLIO_EPOCHS, WORK_ATTR, CostAwarePruner
from tlsearch.search.study import make_pruner

BASE = {"name": "x", "data": {"folder": "."}, "space": {"backbone": {"timm": {"model": "test_resnet"}}}}
STRONG = [0.80, 0.90, 0.95, 0.96]


def _config(pruner: str, epochs: int = 4, **search):
    return parse_config({**BASE, "training": {"epochs": epochs}, "search": {"pruner": pruner, **search}})


def _pruned_steps(
    pruner: optuna.pruners.BasePruner, weak: list[float], *, n_strong: int = 6, n_weak: int = 4
) -> list[int | None]:
    """Run ``n_strong`` strong learning curves to completion, then ``n_weak`` copies of ``weak``: for
    each weak trial, the epoch index at which the pruner stops it (None: never)."""
    study = optuna.create_study(
        direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    for _ in range(n_strong):
        trial = study.ask()
        for step, value in enumerate(STRONG):
            trial.report(value, step)
            trial.should_prune()
        study.tell(trial, STRONG[-1])
    steps: list[int | None] = []
    for _ in range(n_weak):
        trial = study.ask()
        stopped = None
        for step, value in enumerate(weak):
            trial.report(value, step)
            if step + 1 < len(weak) and trial.should_prune():  # the objective never prunes the last epoch
                stopped = step
                break
        steps.append(stopped)
        if stopped is None:
            study.tell(trial, weak[-1])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return steps


WEAK = [0.25, 0.30, 0.32, 0.33]


@pytest.mark.parametrize(("preset", "epochs"), [("median", 1), ("successive_halving", 2)])
def test_presets_stop_every_weak_trial_after_one_or_two_epochs(preset: str, epochs: int) -> None:
    steps = _pruned_steps(make_pruner(_config(preset)), WEAK)
    assert all(step is not None and step + 1 <= epochs for step in steps), steps


def test_hyperband_stops_weak_trials_after_two_epochs_in_its_most_aggressive_bracket() -> None:
    # Hyperband spreads trials over brackets; only the first bracket has its first rung after epoch 2.
    steps = _pruned_steps(make_pruner(_config("hyperband")), WEAK, n_strong=8, n_weak=6)
    assert any(step is not None and step + 1 <= 2 for step in steps), steps


@pytest.mark.parametrize("preset", ["median", "successive_halving", "hyperband"])
def test_presets_keep_a_trial_as_good_as_the_best(preset: str) -> None:
    assert _pruned_steps(make_pruner(_config(preset)), [0.81, 0.91, 0.96, 0.97]) == [None] * 4


def test_no_pruning_without_a_second_epoch_or_with_several_objectives() -> None:
    assert isinstance(make_pruner(_config("successive_halving", epochs=1)), optuna.pruners.NopPruner)
    multi = _config("hyperband", objectives=["accuracy", "latency_ms"])
    assert isinstance(make_pruner(multi), optuna.pruners.NopPruner)
    assert isinstance(make_pruner(_config("none")), optuna.pruners.NopPruner)


def test_pruned_trials_of_a_study_stopped_early_and_best_ties_go_to_the_cheaper(
    write_study, tmp_path
) -> None:
    from tlsearch.report import leaderboard
    from tlsearch.search import best_trial, run_study

    path = write_study(
        space={"backbone": {"timm": {"model": ["test_efficientnet", "test_resnet"], "weights": "random"}}},
        training={"epochs": 3, "lr": {"low": 1e-5, "high": 1e-1, "log": True}},
        search={"n_trials": 6, "pruner": "successive_halving", "sampler": "random"},
    )
    study = run_study(path, out_dir=tmp_path / "out", progress=False).study
    for t in study.trials:
        epochs = len(t.user_attrs.get("history") or [])
        if t.user_attrs.get("stopped") != "converged":  # a solved probe ends once it has converged
            assert epochs == (3 if t.state == optuna.trial.TrialState.COMPLETE else epochs)
        if t.state == optuna.trial.TrialState.PRUNED:
            assert epochs <= 2
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    best = best_trial(study)
    top = max(t.value for t in complete)
    ties = [t for t in complete if t.value == top]
    assert best.value == top and best.user_attrs["params"] == min(t.user_attrs["params"] for t in ties)
    assert leaderboard(study)[0]["trial"] == best.number


START = datetime(2026, 1, 1)
FINETUNE_GFLOP = 100.0  # work per epoch of the finished trials (fine-tunes)


def _cost_study(
    pruner: optuna.pruners.BasePruner,
    *,
    gflop_per_epoch: float = FINETUNE_GFLOP,
    seconds_per_epoch: tuple[float, ...] = (1.0,) * 6,
) -> optuna.Study:
    """A study with finished trials, strong curves over 4 epochs, each of ``gflop_per_epoch`` work
    per epoch, which took ``seconds_per_epoch`` (one per trial) on the clock."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for number, seconds in enumerate(seconds_per_epoch):
        study.add_trial(
            optuna.trial.FrozenTrial(
                number=number,
                state=optuna.trial.TrialState.COMPLETE,
                value=STRONG[-1],
                datetime_start=START,
                datetime_complete=START + timedelta(seconds=4 * seconds),
                params={},
                distributions={},
                user_attrs={WORK_ATTR: {"gflop": 4 * gflop_per_epoch, "epochs": 4}},
                # what successive halving records at its rungs (decided after 2 and 4 epochs)
                system_attrs={"completed_rung_0": STRONG[1], "completed_rung_1": STRONG[3]},
                intermediate_values=dict(enumerate(STRONG)),
                trial_id=number,
            )
        )
    return study


def _stopped(
    study: optuna.Study, *, gflop_per_epoch: float, epochs: int = 2, user_attrs: dict | None = None
) -> bool:
    """Whether a weak trial of ``gflop_per_epoch`` work per epoch is stopped after ``epochs`` epochs."""
    if user_attrs:
        study.enqueue_trial({}, user_attrs=user_attrs)
    trial = study.ask()
    trial.set_user_attr(WORK_ATTR, {"gflop": epochs * gflop_per_epoch, "epochs": epochs})
    assert isinstance(study.pruner, CostAwarePruner)
    for step, value in enumerate(WEAK[:epochs]):
        trial.report(value, step)
    return trial.should_prune()


def test_successive_halving_is_cost_aware_a_cheap_trial_finishes_an_expensive_one_is_stopped() -> None:
    # a weak trial that costs what the finished fine-tunes cost is stopped ...
    assert _stopped(_cost_study(make_pruner(_config("successive_halving"))), gflop_per_epoch=FINETUNE_GFLOP)
    # ... one that costs a tenth (a linear probe on cached features next to fine-tunes) finishes
    assert not _stopped(_cost_study(make_pruner(_config("successive_halving"))), gflop_per_epoch=10.0)
    # without the work of the finished trials (an older study), the plain rule applies
    study = _cost_study(make_pruner(_config("successive_halving")), gflop_per_epoch=0.0)
    assert _stopped(study, gflop_per_epoch=0.0)


def test_cost_is_work_so_one_slow_trial_does_not_make_every_later_trial_cheap() -> None:
    # The same fine-tunes, one of them slowed 100x by a busy machine: in seconds it is the most
    # expensive by far and every later fine-tune looked cheap (never pruned); in work they are equal.
    slowed = (1.0, 1.0, 100.0, 1.0, 1.0, 1.0)
    pruner = make_pruner(_config("successive_halving"))
    assert _stopped(_cost_study(pruner, seconds_per_epoch=slowed), gflop_per_epoch=FINETUNE_GFLOP)


def test_warm_start_trials_get_a_fair_start_then_are_pruned_like_any_trial() -> None:
    portfolio = {PORTFOLIO_ATTR: "finetune_layer_decay"}
    # at the first rung (2 epochs) a weak warm-start fine-tune goes on; a weak sampled one does not
    study = _cost_study(make_pruner(_config("successive_halving")))
    assert not _stopped(study, gflop_per_epoch=FINETUNE_GFLOP, user_attrs=portfolio)
    assert _stopped(study, gflop_per_epoch=FINETUNE_GFLOP)
    # at the second rung (4 epochs, past MIN_PORTFOLIO_EPOCHS) it is stopped: it cannot run the budget out
    assert MIN_PORTFOLIO_EPOCHS < 4
    study = _cost_study(make_pruner(_config("successive_halving", epochs=6)))
    assert _stopped(study, gflop_per_epoch=FINETUNE_GFLOP, epochs=4, user_attrs=portfolio)


def test_cost_aware_pruner_rejects_a_ratio_that_is_not_above_one() -> None:
    with pytest.raises(ValueError, match="ratio must be > 1"):
        CostAwarePruner(optuna.pruners.NopPruner(), ratio=1.0)


def test_median_gives_warm_start_trials_their_first_epochs_then_prunes_them_like_any_trial() -> None:
    """Bug caught: the median pruner judging the warm-start fine-tune by its first epoch against
    the linear probes (which converge in one), as the quickstart's was, and stopping it there."""
    study = optuna.create_study(
        direction="maximize",
        pruner=make_pruner(_config("median")),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for _ in range(6):
        trial = study.ask()
        for step, value in enumerate(STRONG):
            trial.report(value, step)
        study.tell(trial, STRONG[-1])

    def first_stop(user_attrs: dict | None = None) -> int | None:
        if user_attrs:
            study.enqueue_trial({}, user_attrs=user_attrs)
        trial = study.ask()
        for step, value in enumerate(WEAK):
            trial.report(value, step)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return step
        study.tell(trial, WEAK[-1])
        return None

    assert first_stop() == 0  # a weak sampled trial: at its first epoch
    assert first_stop({PORTFOLIO_ATTR: "finetune"}) == MIN_PORTFOLIO_EPOCHS  # then like any trial
