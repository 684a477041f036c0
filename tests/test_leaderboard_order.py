"""One ordering of trials: the live view's leaders come out in the final leaderboard's order, ties
(equal scores) the cheaper first, whether the console read them from the study or saw them end."""

from __future__ import annotations

import io
from types import SimpleNamespace

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tlsearch.cli.console import Console
from tlsearch.report import leaderboard

CHOICES = {"backbone": "timm", "backbone.timm.model": "test_efficientnet", "head": "linear"}


def _trial(value: float, params: int) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=TrialState.COMPLETE,
        value=value,
        params={"train.lr": 1e-3},
        distributions={"train.lr": FloatDistribution(1e-4, 1e-1, log=True)},
        user_attrs={"choices": {**CHOICES, "freezing": "linear_probe", "train.lr": 1e-3}, "params": params},
    )


def test_ties_are_ordered_the_same_in_the_live_view_and_the_final_leaderboard() -> None:
    study = optuna.create_study(direction="maximize")
    for value, params in ((0.8, 5000), (0.8, 1000), (0.5, 10)):  # trial 1 ties trial 0, and is smaller
        study.add_trial(_trial(value, params))
    final = [row["trial"] for row in leaderboard(study)]
    assert final == [1, 0, 2]

    seeded = Console(total=6, mode="plain", stream=io.StringIO())  # the trials were there before this run
    seeded.event(
        "trial_start",
        trial=SimpleNamespace(number=3, study=study),
        choices=study.trials[0].user_attrs["choices"],
    )
    assert [r.number for r in seeded.leaders()] == final

    live = Console(total=6, mode="plain", stream=io.StringIO())  # it saw each one end
    for t in study.trials:
        live.event("trial_start", trial=t, choices=t.user_attrs["choices"])
        live.event("trial_end", trial=t, state="COMPLETE", value=t.value, metrics={"accuracy": t.value})
    assert [r.number for r in live.leaders()] == final
