"""Warm start: the portfolio's trials come first, use the sampler's names, only plugins of the space,
and are never enqueued again on resume."""

from __future__ import annotations

import optuna

from tlsearch.config import load_config, resolve_space
from tlsearch.registry import get_plugin_manager
from tlsearch.search import run_study
from tlsearch.search.portfolio import PORTFOLIO_ATTR, WARM_START_ATTR, portfolio


def _space(write_study, **space):
    config = load_config(write_study(space=space))
    return resolve_space(config, get_plugin_manager().registry)


def test_portfolio_uses_only_plugins_of_the_space_with_values_in_range(write_study) -> None:
    space = _space(
        write_study,
        freezing=["linear_probe", "layer_decay", "full_finetune"],
        regularizers={"label_smoothing": {}, "mixup": {}},
    )
    entries = dict(portfolio(space))
    assert list(entries) == ["linear_probe", "finetune_layer_decay_label_smoothing"]
    probe, tune = entries["linear_probe"], entries["finetune_layer_decay_label_smoothing"]
    assert probe["freezing"] == "linear_probe" and probe["regularizer.label_smoothing"] is False
    assert probe["regularizer.mixup"] is False
    assert probe["train.lr"] == 1e-2  # the study's range is [1e-3, 1e-2]
    assert tune["freezing"] == "layer_decay" and tune["freezing.layer_decay.decay"] == 0.75
    assert tune["regularizer.label_smoothing"] is True and tune["regularizer.label_smoothing.epsilon"] == 0.1
    assert tune["train.lr"] == 1e-3 and tune["regularizer.mixup"] is False

    no_probe = dict(portfolio(_space(write_study, freezing=["full_finetune", "bitfit"])))
    assert list(no_probe) == ["finetune_full_finetune_label_smoothing"]
    assert no_probe["finetune_full_finetune_label_smoothing"]["freezing"] == "full_finetune"


def test_portfolio_respects_a_regularizer_the_study_forces_on(write_study) -> None:
    space = _space(write_study, regularizers={"mixup": {"enabled": True}})
    assert [name for name, _ in portfolio(space)] == []  # neither entry is possible without mixup
    space = _space(write_study, regularizers={"label_smoothing": {"enabled": True}})
    assert [name for name, _ in portfolio(space)] == ["finetune_full_finetune_label_smoothing"]


def test_warm_start_trials_run_first_and_are_not_enqueued_again_on_resume(write_study, tmp_path) -> None:
    path = write_study(search={"n_trials": 4, "warm_start": True})
    study = run_study(path, out_dir=tmp_path / "out", progress=False).study
    trials = sorted(study.trials, key=lambda t: t.number)
    assert study.user_attrs[WARM_START_ATTR] == ["linear_probe", "finetune_full_finetune_label_smoothing"]
    assert [t.user_attrs.get(PORTFOLIO_ATTR) for t in trials] == [
        "linear_probe",
        "finetune_full_finetune_label_smoothing",
        None,
        None,
    ]
    assert trials[0].params["freezing"] == "linear_probe" and trials[0].params["train.lr"] == 1e-2
    assert trials[1].params["freezing"] == "full_finetune" and trials[1].params["regularizer.label_smoothing"]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)

    resumed = run_study(path, out_dir=tmp_path / "out", n_trials=6, progress=False).study
    assert len(resumed.trials) == 6
    assert sum(1 for t in resumed.trials if t.user_attrs.get(PORTFOLIO_ATTR)) == 2
