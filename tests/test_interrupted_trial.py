"""Ctrl-C inside a trial, through the real ``run_study`` and ``Objective``: the trial is recorded
as interrupted (FAIL, ``failure_kind`` "interrupted"), its parameters and seed are requeued for a
rerun, plugins hear the trial end, and the KeyboardInterrupt still reaches the caller."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import optuna
import pytest

from tlsearch.search import run_study
from tlsearch.search.storage import make_storage

FAIL, WAITING = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING

# A regularizer whose penalty is "interrupted" (Ctrl-C) at the first step; an observer of trial ends.
INTERRUPT_PLUGIN = textwrap.dedent("""
    from tlsearch import hookimpl
    from tlsearch.kinds import Regularizer
    from tlsearch.space import Categorical

    ENDS = []

    class CtrlC(Regularizer):
        name = "ctrl_c"
        hyperparameters = {"when": Categorical(("first_step",))}

        def penalty(self, model, *, images, features):
            raise KeyboardInterrupt

    @hookimpl
    def tlsearch_register_regularizers(register):
        register.add(CtrlC)

    @hookimpl
    def tlsearch_trial_end(trial, state, value, metrics):
        trial.study.set_user_attr("ended", [trial.number, state, metrics.get("failure")])
""")


def test_ctrl_c_records_the_trial_as_interrupted_and_requeues_its_parameters(
    write_study, tmp_path: Path
) -> None:
    """Bugs caught: the interrupted reason not recorded, the parameters not requeued (a rerun would
    sample new ones), the trial-end notification dropped, the KeyboardInterrupt swallowed."""
    plugin = tmp_path / "ctrl_c_plugin.py"
    plugin.write_text(INTERRUPT_PLUGIN)
    config = write_study(
        plugins=[str(plugin)],
        space={"freezing": ["linear_probe"], "regularizers": {"ctrl_c": {"enabled": True}}},
        search={"n_trials": 2, "pruner": "none", "seed": 7},
    )
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_study(config, out_dir=out, progress=False)
    study = optuna.load_study(study_name="tiny", storage=make_storage(str(out / "study.journal")))
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert [t.state for t in trials] == [FAIL, WAITING]
    failed, requeued = trials
    assert failed.user_attrs["failure_kind"] == "interrupted"
    assert failed.user_attrs["worker"]["pid"] == os.getpid()  # who ran it, for other workers' sweeps
    assert "interrupt" in failed.user_attrs["failure"].lower()
    assert requeued.params == {} and requeued.system_attrs["fixed_params"] == failed.params
    assert requeued.user_attrs["retry_of"] == 0 and requeued.user_attrs["retry_reason"] == "interrupted"
    assert requeued.user_attrs["seed"] == failed.user_attrs["seed"] == 7
    assert study.user_attrs["ended"] == [0, "FAIL", failed.user_attrs["failure"]]
