"""Warm start: the portfolio's trials come first, use the sampler's names, only plugins of the space,
are composed from what the plugins declare (a third-party strategy's entry joins), and are never
enqueued again on resume."""

from __future__ import annotations

import optuna

from tlsearch.config import load_config, resolve_space
from tlsearch.rank.candidates import candidates
from tlsearch.rank.ranking import RankedBackbone
from tlsearch.registry import get_plugin_manager
from tlsearch.search import run_study
from tlsearch.search.portfolio import (
    PORTFOLIO_ATTR,
    WARM_START_ATTR,
    Planned,
    cheapest_first,
    portfolio,
    warm_start,
)

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
    entries = _named(portfolio(space))
    assert list(entries) == [
        "linear_probe",
        "finetune_full_finetune_label_smoothing",  # the measured recipe wins the slot over layer_decay
        "linear_probe_l2_strong",
        "linear_probe_l2_medium",
    ]
    probe, tune = entries["linear_probe"], entries["finetune_full_finetune_label_smoothing"]
    assert probe["freezing"] == "linear_probe" and probe["regularizer.label_smoothing"] is False
    assert probe["regularizer.mixup"] is False
    assert probe["train.lr"] == 1e-2  # the study's range is [1e-3, 1e-2]
    assert tune["freezing"] == "full_finetune"
    assert tune["regularizer.label_smoothing"] is True and tune["regularizer.label_smoothing.epsilon"] == 0.1
    assert tune["train.lr"] == 2e-3 and tune["regularizer.mixup"] is False
    without_full = _named(portfolio(_space(write_study, freezing=["linear_probe", "layer_decay"])))
    assert without_full["finetune_layer_decay_label_smoothing"]["freezing.layer_decay.decay"] == 0.75

    no_probe = _named(portfolio(_space(write_study, freezing=["full_finetune", "bitfit"])))
    assert list(no_probe) == ["finetune_full_finetune_label_smoothing"]
    assert no_probe["finetune_full_finetune_label_smoothing"]["freezing"] == "full_finetune"


def test_portfolio_respects_a_regularizer_the_study_forces_on(write_study) -> None:
    space = _space(write_study, regularizers={"mixup": {"enabled": True}})
    assert [e.name for e in portfolio(space)] == []  # no entry is possible without mixup
    space = _space(write_study, regularizers={"label_smoothing": {"enabled": True}})
    assert [e.name for e in portfolio(space)] == ["finetune_full_finetune_label_smoothing"]


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


def _named(entries: list[Planned]) -> dict[str, dict]:
    return {e.name: e.params for e in entries}


def _ranking(space) -> list[RankedBackbone]:
    return [
        RankedBackbone(c.label, c.plugin, dict(c.params), -float(i), "logme", expanded=dict(c.expanded))
        for i, c in enumerate(candidates(space))
    ]


def test_further_probes_come_last_and_a_duplicate_after_clipping_is_skipped(write_study) -> None:
    space = _space(write_study, freezing=["linear_probe", "full_finetune"])
    entries = portfolio(space)
    assert [e.name for e in entries] == [
        "linear_probe",
        "finetune_full_finetune_label_smoothing",
        "linear_probe_l2_strong",
        "linear_probe_l2_medium",
    ]
    assert [p.params["freezing.linear_probe.l2"] for p in entries if p.order == 0] == [1e-4, 1e-2, 1e-3]
    # a study that fixes l2 makes the three probes one: the copies are skipped
    fixed = _space(write_study, freezing={"linear_probe": {"l2": 1e-3}, "full_finetune": {}})
    assert [e.name for e in portfolio(fixed)] == ["linear_probe", "finetune_full_finetune_label_smoothing"]


def test_ranked_probes_give_each_further_backbone_a_linear_probe(write_study) -> None:
    space = _space(write_study, **TWO_MODELS, freezing=["linear_probe", "full_finetune"])
    ranking = _ranking(space)
    probes = _named(portfolio(space, ranking=ranking, order_first=True, ranked_probes=True))
    second = f"ranked:{ranking[1].label}:linear_probe"
    assert second in probes
    assert probes[second]["backbone.timm.model"] == ranking[1].params["model"]
    assert probes[second]["freezing"] == "linear_probe" and probes[second]["train.lr"] == 1e-2
    plain = _named(portfolio(space, ranking=ranking, order_first=True))
    assert plain[f"ranked:{ranking[1].label}"] == {"backbone.timm.model": ranking[1].params["model"]}


def test_cheapest_first_runs_every_cheap_entry_before_any_other_entry() -> None:
    entries = [
        Planned("linear_probe", {"freezing": "linear_probe"}, 0),
        Planned("finetune_layer_decay", {"freezing": "layer_decay"}, 2),
        Planned("ranked:b", {"backbone": "b"}, 2),
        Planned("ranked:c:linear_probe", {"backbone": "c", "freezing": "linear_probe"}, 1),
        Planned("linear_probe_l2_strong", {"freezing": "linear_probe"}, 0),
    ]
    assert [e.name for e in cheapest_first(entries)] == [
        "linear_probe",
        "linear_probe_l2_strong",
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
    # priority: probe, fine-tune, the second backbone's probe, the probe at a stronger L2
    assert names == [
        "linear_probe",
        "linear_probe_l2_strong",
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
