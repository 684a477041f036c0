"""The warm start and the default space come from what plugins declare (``portfolio``,
``default``), not from names the core knows: a third-party freezing strategy's entry joins the warm
start, a third-party ``default = True`` plugin joins the default space, and the default study starts
with the solved linear probe, then fine-tunes."""

from __future__ import annotations

import optuna
import pytest
import yaml

from tlsearch.config import load_config, resolve_space
from tlsearch.errors import ConfigError
from tlsearch.kinds import FreezingStrategy, Head, PortfolioEntry
from tlsearch.registry import get_plugin_manager
from tlsearch.search import run_study
from tlsearch.search.portfolio import PORTFOLIO_ATTR, WARM_START_ATTR, warm_start

THIRD_PARTY = '''
from tlsearch import hookimpl
from tlsearch.kinds import FreezingStrategy, Head, PortfolioEntry, ParamGroup
from tlsearch.kinds.freezing import set_trainable
from tlsearch.space import Float
from torch import nn


class FrozenScaled(FreezingStrategy):
    """A frozen backbone whose head trains at a declared lr multiplier."""

    name = "frozen_scaled"
    backbone_frozen = True
    hyperparameters = {"head_scale": Float(0.1, 10.0, log=True, default=1.0)}
    portfolio = (PortfolioEntry(name="frozen_scaled_x3", params={"head_scale": 3.0}, lr=5e-3, cost="cheap", priority=5),)

    def setup(self, model):
        set_trainable(model.backbone.parameters(), False)
        set_trainable(model.head.parameters(), True)
        return [ParamGroup("head", model.head_parameters(), self.head_scale)]

    def set_train_mode(self, model):
        model.backbone.eval()


class WideHead(Head):
    """A linear head that every study gets unless it names its heads."""

    name = "wide_head"
    default = True

    def build(self, in_features, out_features):
        return nn.Linear(in_features, out_features)


@hookimpl
def tlsearch_register_freezing_strategies(register):
    register.add(FrozenScaled)


@hookimpl
def tlsearch_register_heads(register):
    register.add(WideHead)
'''


def _without(path, *sections: str, **extra):
    """The study file at ``path`` without ``space.<section>`` for each of ``sections``, ``extra`` merged in."""
    raw = yaml.safe_load(path.read_text())
    for section in sections:
        raw["space"].pop(section)
    for setting in ("pruner", "warm_start"):  # the tiny study's own choices: the defaults here
        raw["search"].pop(setting)
    raw.update(extra)
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "third_party.py"
    path.write_text(THIRD_PARTY)
    return path


def test_a_third_party_strategys_entry_joins_the_warm_start_and_runs(
    write_study, plugin_file, tmp_path
) -> None:
    path = write_study(
        plugins=[str(plugin_file)],
        space={"freezing": ["linear_probe", "full_finetune", "frozen_scaled"]},
        search={"n_trials": 4, "pruner": "none", "warm_start": True},
    )
    study = run_study(path, out_dir=tmp_path / "out", progress=False).study
    # by priority: the probe (0), the third party's cheap entry (5); both cheap, so in that order
    assert study.user_attrs[WARM_START_ATTR] == ["linear_probe", "frozen_scaled_x3"]
    trials = sorted(study.trials, key=lambda t: t.number)
    second = trials[1]
    assert second.user_attrs[PORTFOLIO_ATTR] == "frozen_scaled_x3"
    assert second.params["freezing"] == "frozen_scaled"
    assert second.params["freezing.frozen_scaled.head_scale"] == 3.0
    assert second.params["train.lr"] == 5e-3
    assert not second.params["regularizer.label_smoothing"]  # its entry is for full (fine-tune) trials
    assert second.state == optuna.trial.TrialState.COMPLETE


def test_the_default_space_is_what_plugins_declare_default(write_study, plugin_file) -> None:
    config = _without(write_study(), "head", "freezing", plugins=[str(plugin_file)])
    pm = get_plugin_manager(config.plugins)
    space = resolve_space(config, pm.registry)
    assert [c.name for c in space.head] == ["linear", "wide_head"]
    assert [c.name for c in space.freezing] == ["full_finetune", "layer_decay", "linear_probe"]


def test_no_default_plugin_is_a_config_error_naming_the_choices(write_study) -> None:
    config = _without(write_study(), "freezing")
    registry = get_plugin_manager().registry
    for info in registry.plugins["freezing"].values():
        assert isinstance(info.cls.default, bool)
    registry.plugins["freezing"] = {
        n: info for n, info in registry.plugins["freezing"].items() if not info.cls.default
    }
    with pytest.raises(
        ConfigError, match=r"space\.freezing is not given .*default = True; name one: .*bitfit"
    ):
        resolve_space(config, registry)


def test_the_default_study_starts_with_the_solved_probe_then_fine_tunes(write_study) -> None:
    config = _without(write_study(search={"n_trials": 10}), "head", "freezing", "regularizers")
    assert config.search.warm_start and config.search.pruner == "successive_halving"
    space = resolve_space(config, get_plugin_manager().registry)
    study = optuna.create_study(direction="maximize")
    names = warm_start(study, config=config, space=space)
    assert names == [
        "linear_probe",
        "linear_probe_l2_strong",
        "linear_probe_l2_medium",
        "finetune_full_finetune",
    ]
    first = study.get_trials(deepcopy=False)[0].system_attrs["fixed_params"]
    assert first["freezing"] == "linear_probe" and first["freezing.linear_probe.l2"] == 1e-4


def test_an_entry_naming_an_undeclared_hyperparameter_is_refused_with_the_choices() -> None:
    with pytest.raises(
        TypeError, match=r"entry 'bad' sets unknown hyperparameter\(s\) \['decay'\]; declared: \['rate'\]"
    ):
        from tlsearch.space import Float

        class Bad(FreezingStrategy):
            name = "bad_strategy"
            hyperparameters = {"rate": Float(0.1, 1.0, default=0.5)}
            portfolio = (PortfolioEntry(name="bad", params={"decay": 0.5}),)

    with pytest.raises(TypeError, match=r"entry 'tuned' sets training \['epochs'\], which only a freezing"):

        class TrainsItsHead(Head):
            name = "trains_its_head"
            portfolio = (PortfolioEntry(name="tuned", training={"epochs": 8}),)

    with pytest.raises(ValueError, match=r"cost 'free' is not one of \('cheap', 'full'\)"):
        PortfolioEntry(name="x", cost="free")


def test_an_entry_without_a_priority_runs_after_the_built_in_ones_and_one_epoch_is_a_minimum() -> None:
    """Bugs caught: the documented default priority (100) changed, so a plugin's entry that sets
    none no longer ties with an explicit 100; a one-epoch minimum (the smallest valid) refused."""
    assert PortfolioEntry(name="x").priority == 100
    assert PortfolioEntry(name="x", training={"epochs": 1}).training["epochs"] == 1
    with pytest.raises(ValueError, match=r"training epochs must be an int >= 1 but got 0"):
        PortfolioEntry(name="x", training={"epochs": 0})
