"""The search space is conditional: a regularizer with no effect under a freezing strategy is never
sampled with it (``Regularizer.applies_to``), so no trial is spent on a combination that changes nothing."""

from __future__ import annotations

import optuna
import pytest

from tlsearch.config import load_config, resolve_space
from tlsearch.kinds import FreezingStrategy, Regularizer
from tlsearch.registry import get_plugin_manager
from tlsearch.search.sampling import instantiate, sample_choices

NEEDS_TRAINING = ("l2_sp", "delta", "bss", "mixup", "cutmix")


def _sampled(write_study, sampler: optuna.samplers.BaseSampler, n: int, **space) -> list[dict]:
    config = load_config(write_study(space=space))
    pm = get_plugin_manager()
    resolved = resolve_space(config, pm.registry)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    out = []
    for i in range(n):
        trial = study.ask()
        choices = sample_choices(trial, resolved)
        instantiate(choices, pm.registry)  # the trial's plugins can be made from what was recorded
        out.append({"choices": choices, "params": dict(trial.params)})
        study.tell(trial, float(i % 7))
    return out


@pytest.mark.parametrize(
    "sampler", [optuna.samplers.TPESampler(seed=0, n_startup_trials=8), optuna.samplers.RandomSampler(seed=1)]
)
def test_backbone_regularizers_are_never_sampled_with_a_frozen_backbone(write_study, sampler) -> None:
    trials = _sampled(
        write_study,
        sampler,
        40,
        freezing=["linear_probe", "full_finetune"],
        regularizers={name: {} for name in (*NEEDS_TRAINING, "label_smoothing")},
    )
    probes = [t for t in trials if t["choices"]["freezing"] == "linear_probe"]
    tuned = [t for t in trials if t["choices"]["freezing"] == "full_finetune"]
    assert probes and tuned
    for t in probes:
        for name in NEEDS_TRAINING:
            assert t["choices"][f"regularizer.{name}"] is False  # recorded as off …
            assert not any(k.startswith(f"regularizer.{name}") for k in t["params"])  # … and never sampled
    assert any(t["choices"]["regularizer.label_smoothing"] for t in probes)  # acts on a probe's head: kept
    for name in NEEDS_TRAINING:  # with a backbone that trains, each is still searched
        assert any(t["choices"][f"regularizer.{name}"] for t in tuned), name


def test_the_rule_sees_the_trials_own_strategy_hyperparameters(write_study) -> None:
    """``freeze_stages`` at fraction 1 freezes every group: a linear probe in all but name."""
    frozen = _sampled(
        write_study,
        optuna.samplers.RandomSampler(seed=0),
        8,
        freezing={"freeze_stages": {"fraction": 1.0}},
        regularizers=["l2_sp"],
    )
    assert all(t["choices"]["regularizer.l2_sp"] is False for t in frozen)
    half = _sampled(
        write_study,
        optuna.samplers.RandomSampler(seed=0),
        8,
        freezing={"freeze_stages": {"fraction": 0.5}},
        regularizers=["l2_sp"],
    )
    assert any(t["choices"]["regularizer.l2_sp"] for t in half)


def test_the_default_rule_and_the_built_ins_declarations() -> None:
    registry = get_plugin_manager().registry
    probe = registry.get("freezing", "linear_probe").cls()
    finetune = registry.get("freezing", "full_finetune").cls()
    for name in NEEDS_TRAINING:
        cls = registry.get("regularizer", name).cls
        assert not cls.applies_to(probe) and cls.applies_to(finetune), name
    for name in ("label_smoothing", "weight_decay"):
        assert registry.get("regularizer", name).cls.applies_to(probe), name

    class AnyStrategy(Regularizer):
        name = "any_strategy"

    class Frozen(FreezingStrategy):
        name = "frozen_test"
        backbone_frozen = True

        def setup(self, model):  # pragma: no cover - never trained here
            return []

    assert AnyStrategy.applies_to(Frozen())  # the default: applies everywhere


def test_a_regularizer_switched_on_with_only_frozen_strategies_is_a_config_error(
    write_study, tmp_path
) -> None:
    from tlsearch.errors import ConfigError
    from tlsearch.search import prepare

    study = write_study(space={"freezing": ["linear_probe"], "regularizers": {"l2_sp": {"enabled": True}}})
    with pytest.raises(ConfigError, match=r"space.regularizers.l2_sp: switched on, but .*\(linear_probe\)"):
        prepare(study, out_dir=tmp_path / "out")
    searched = write_study("ok.yaml", space={"freezing": ["linear_probe"], "regularizers": ["l2_sp"]})
    prepare(searched, out_dir=tmp_path / "ok")  # searched on/off: it is simply never sampled
