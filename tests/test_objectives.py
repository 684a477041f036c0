"""Accuracy versus cost: multi-objective and constrained studies, latency, best-trial selection."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

from tlsearch.config import parse_config
from tlsearch.errors import ConfigError
from tlsearch.report import leaderboard
from tlsearch.search import best_trial, export_study, run_study
from tlsearch.search.objectives import (
    CONSTRAINTS_ATTR,
    LATENCY_ATTR,
    measure_latency,
    pareto_front,
    ranked_trials,
    select_best,
)


def _trial(values, *, params=1000, latency=1.0, constraints=None, state=TrialState.COMPLETE):
    attrs = {"params": params, LATENCY_ATTR: latency, "seconds": 1.0}
    if constraints is not None:
        attrs[CONSTRAINTS_ATTR] = constraints
    return create_trial(values=values, state=state, user_attrs=attrs)


def test_config_validates_objectives_and_constraints(write_study) -> None:
    base = {"name": "x", "data": {"folder": "."}, "space": {"backbone": {"timm": {"model": "test_resnet"}}}}
    config = parse_config({**base, "search": {"objectives": ["accuracy", "latency_ms"]}})
    assert config.objectives == ["accuracy", "latency_ms"] and config.directions == ["maximize", "minimize"]
    assert config.multi_objective and config.metric == "accuracy"
    assert parse_config(base).objectives == ["accuracy"] and not parse_config(base).multi_objective
    with pytest.raises(
        ConfigError, match="'speed' is not valid for task 'classification'; valid choices: accuracy"
    ):
        parse_config({**base, "search": {"objectives": ["accuracy", "speed"]}})
    with pytest.raises(ConfigError, match="must start with the task's metric"):
        parse_config({**base, "search": {"objectives": ["latency_ms", "accuracy"]}})
    with pytest.raises(
        ConfigError, match="'accuracy' cannot be constrained; valid choices: latency_ms, params, gflops"
    ):
        parse_config({**base, "search": {"constraints": {"accuracy": 0.9}}})
    with pytest.raises(ConfigError, match="latency_ms must be > 0"):
        parse_config({**base, "search": {"constraints": {"latency_ms": 0}}})


def test_measure_latency_times_batch_one_runs_after_warmup() -> None:
    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            calls.append(tuple(x.shape))
            return x

    model = Recorder().train()
    ms = measure_latency(model, input_size=16, runs=5, warmup=2)
    assert ms >= 0 and calls == [(1, 3, 16, 16)] * 7 and model.training  # mode restored


def test_equal_scores_prefer_the_cheaper_trial() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(_trial([0.9], params=5000))
    study.add_trial(_trial([0.9], params=1000))
    study.add_trial(_trial([0.8], params=10))
    study.add_trial(_trial([0.89], params=100))
    assert select_best(study).number == 1
    assert [t.number for t in ranked_trials(study)] == [1, 0, 3, 2]
    # within a tolerance of 0.02, 0.89 counts as equal to 0.9 and the 100-parameter trial wins
    assert select_best(study, tie_tolerance=0.02).number == 3
    assert [row["trial"] for row in leaderboard(study)] == [1, 0, 3, 2]


def test_multi_objective_best_is_the_most_accurate_on_the_front() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(_trial([0.9, 30.0]))
    study.add_trial(_trial([0.8, 5.0]))
    study.add_trial(_trial([0.7, 10.0]))  # dominated by trial 1
    study.add_trial(_trial([0.9, 20.0]))  # dominates trial 0
    assert [t.number for t in pareto_front(study)] == [3, 1]
    assert select_best(study).number == 3 and best_trial(study).number == 3
    assert [row["trial"] for row in leaderboard(study)][:2] == [3, 1]


def test_constraints_exclude_infeasible_trials_from_the_best() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(_trial([0.95], constraints=[5.0]))
    study.add_trial(_trial([0.80], constraints=[-1.0]))
    study.add_trial(_trial([0.85], constraints=[0.0]))
    assert select_best(study).number == 2
    assert [t.number for t in ranked_trials(study)] == [2, 1, 0]


def test_multi_objective_study_records_latency_and_exports_from_the_front(write_study, tmp_path) -> None:
    path = write_study(search={"n_trials": 3, "objectives": ["accuracy", "latency_ms"], "pruner": "median"})
    result = run_study(path, out_dir=tmp_path / "out", progress=False)
    study = result.study
    assert len(study.directions) == 2 and study.metric_names == ["accuracy", "latency_ms"]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    for t in complete:
        assert t.values[1] == pytest.approx(t.user_attrs[LATENCY_ATTR]) and t.values[1] > 0
    front = {t.number for t in study.best_trials}
    chosen = best_trial(study)
    assert chosen.number in front and chosen.values[0] == max(t.values[0] for t in study.best_trials)
    report = export_study(tmp_path / "out")
    assert report.path.is_file()


def test_constrained_study_records_constraint_values(write_study, tmp_path) -> None:
    path = write_study(search={"n_trials": 2, "constraints": {"params": 10}})  # no model is that small
    study = run_study(path, out_dir=tmp_path / "out", progress=False).study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert complete and all(
        t.user_attrs[CONSTRAINTS_ATTR][0] == t.user_attrs["params"] - 10 for t in complete
    )
    if hasattr(optuna.trial.Trial, "set_constraint"):  # what Optuna's own samplers read
        assert all(t.system_attrs.get("constraints:params") == t.user_attrs["params"] - 10 for t in complete)
    assert best_trial(study).number in {t.number for t in complete}  # the least violating, not an error
