"""Warm start: the portfolio's trials come first, use the sampler's names, only plugins of the space,
and are never enqueued again on resume."""

from __future__ import annotations

import optuna

from tlsearch.config import load_config, resolve_space
from tlsearch.rank.candidates import candidates
from tlsearch.rank.ranking import RankedBackbone
from tlsearch.registry import get_plugin_manager
from tlsearch.search import run_study
from tlsearch.search.portfolio import PORTFOLIO_ATTR, WARM_START_ATTR, cheapest_first, portfolio, warm_start

TWO_MODELS = {"backbone": {"timm": {"model": ["test_efficientnet", "test_resnet"], "weights": "random"}}}


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
    path = write_study(search={"n_trials": 4, "warm_start": True, "pruner": "none"})
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


def _ranking(space) -> list[RankedBackbone]:
    return [
        RankedBackbone(c.label, c.plugin, dict(c.params), -float(i), "logme", expanded=dict(c.expanded))
        for i, c in enumerate(candidates(space))
    ]


def test_probe_lrs_add_linear_probes_at_further_learning_rates_clipped_and_deduplicated(write_study) -> None:
    space = _space(write_study, freezing=["linear_probe", "full_finetune"])
    entries = portfolio(space, probe_lrs=(3e-2, 3e-3, 2e-3))
    names = [name for name, _ in entries]
    # 3e-2 clips to the range's 1e-2, which the first probe already has: skipped
    assert names == [
        "linear_probe",
        "finetune_full_finetune_label_smoothing",
        "linear_probe_lr0.003",
        "linear_probe_lr0.002",
    ]
    assert [p["train.lr"] for n, p in entries if n.startswith("linear_probe")] == [1e-2, 3e-3, 2e-3]
    assert all(p["freezing"] == "linear_probe" for n, p in entries if n.startswith("linear_probe"))


def test_ranked_probes_give_each_further_backbone_a_linear_probe(write_study) -> None:
    space = _space(write_study, **TWO_MODELS, freezing=["linear_probe", "full_finetune"])
    ranking = _ranking(space)
    probes = dict(portfolio(space, ranking=ranking, order_first=True, ranked_probes=True))
    second = f"ranked:{ranking[1].label}:linear_probe"
    assert second in probes
    assert probes[second]["backbone.timm.model"] == ranking[1].params["model"]
    assert probes[second]["freezing"] == "linear_probe" and probes[second]["train.lr"] == 1e-2
    plain = dict(portfolio(space, ranking=ranking, order_first=True))
    assert plain[f"ranked:{ranking[1].label}"] == {"backbone.timm.model": ranking[1].params["model"]}


def test_cheapest_first_runs_every_linear_probe_before_any_other_entry() -> None:
    entries = [
        ("linear_probe", {"freezing": "linear_probe"}),
        ("finetune_layer_decay", {"freezing": "layer_decay"}),
        ("ranked:b", {"backbone": "b"}),
        ("ranked:c:linear_probe", {"backbone": "c", "freezing": "linear_probe"}),
        ("linear_probe_lr0.03", {"freezing": "linear_probe"}),
    ]
    assert [n for n, _ in cheapest_first(entries)] == [
        "linear_probe",
        "linear_probe_lr0.03",
        "ranked:c:linear_probe",
        "finetune_layer_decay",
        "ranked:b",
    ]


def test_warm_start_picks_by_priority_within_half_the_budget_and_enqueues_cheapest_first(write_study) -> None:
    raw = {"freezing": ["linear_probe", "full_finetune"], **TWO_MODELS}
    config = load_config(
        write_study(space=raw, search={"n_trials": 8, "warm_start": True, "rank": {"order_first": True}})
    )
    space = resolve_space(config, get_plugin_manager().registry)
    ranking = _ranking(space)
    study = optuna.create_study(direction="maximize")
    names = warm_start(study, config=config, space=space, ranking=ranking)
    # priority: probe, fine-tune, the second backbone's probe, the probe at 3e-3 (3e-2 clips to 1e-2)
    assert names == [
        "linear_probe",
        "linear_probe_lr0.003",
        f"ranked:{ranking[1].label}:linear_probe",
        "finetune_full_finetune_label_smoothing",
    ]
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs[PORTFOLIO_ATTR] for t in waiting] == names
    assert study.user_attrs[WARM_START_ATTR] == names
    config4 = config.model_copy(update={"search": config.search.model_copy(update={"n_trials": 4})})
    small = optuna.create_study(direction="maximize")
    assert warm_start(small, config=config4, space=space, ranking=ranking) == [
        "linear_probe",
        "finetune_full_finetune_label_smoothing",
    ]
