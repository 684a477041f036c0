"""Multi-fidelity: epochs are the budget; the pruner presets stop weak trials after one or two epochs;
multi-objective studies are not pruned; cost breaks ties."""

from __future__ import annotations

import optuna
import pytest

from tlsearch.config import parse_config
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
        assert epochs == (3 if t.state == optuna.trial.TrialState.COMPLETE else epochs)
        if t.state == optuna.trial.TrialState.PRUNED:
            assert epochs <= 2
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    best = best_trial(study)
    top = max(t.value for t in complete)
    ties = [t for t in complete if t.value == top]
    assert best.value == top and best.user_attrs["params"] == min(t.user_attrs["params"] for t in ties)
    assert leaderboard(study)[0]["trial"] == best.number
