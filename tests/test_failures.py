"""The failure policy: each kind of failure is recorded on its trial (FAIL + ``failure`` +
``failure_kind``) and the next trial runs; config and plugin errors stop before any trial."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch

from tlsearch.errors import PluginCallError
from tlsearch.search import run_study
from tlsearch.search.failures import classify, guard_plugins, is_oom
from tlsearch.search.sampling import TrialPlugins

FAIL, COMPLETE = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE

# A regularizer that fails in the way its ``mode`` says, on the first trial of the process only.
BOOM_PLUGIN = textwrap.dedent('''
    import torch
    from tlsearch import hookimpl
    from tlsearch.kinds import Regularizer
    from tlsearch.space import Categorical

    CALLS = {"n": 0}

    class Boom(Regularizer):
        """Fails once: out of memory, an exception, or a NaN penalty."""
        name = "boom"
        hyperparameters = {"mode": Categorical(("oom", "raise", "nan"))}

        def setup(self, model, *, num_outputs, task):
            CALLS["n"] += 1
            self.first = CALLS["n"] == 1
            if self.first and self.mode == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

        def penalty(self, model, *, images, features):
            if self.first and self.mode == "raise":
                raise ValueError("the penalty exploded")
            if self.first and self.mode == "nan":
                return torch.tensor(float("nan"))
            return None

    @hookimpl
    def tlsearch_register_regularizers(register):
        register.add(Boom)
''')


@pytest.fixture
def boom_study(write_study, tmp_path: Path):
    plugin = tmp_path / "boom_plugin.py"
    plugin.write_text(BOOM_PLUGIN)

    def make(mode: str, **extra):
        return write_study(
            plugins=[str(plugin)],
            space={"freezing": ["linear_probe"], "regularizers": {"boom": {"enabled": True, "mode": mode}}},
            search={"n_trials": 2, "pruner": "none"},
            **extra,
        )

    return make


def _trials(result):
    return sorted(result.study.get_trials(deepcopy=False), key=lambda t: t.number)


def test_out_of_memory_is_recorded_and_retried_once_at_half_the_batch(boom_study, tmp_path):
    result = run_study(boom_study("oom"), out_dir=tmp_path / "out", progress=False)
    trials = _trials(result)
    assert trials[0].state == FAIL
    assert trials[0].user_attrs["failure_kind"] == "oom"
    assert "out of memory" in trials[0].user_attrs["failure"]
    retry = trials[1]
    assert retry.state == COMPLETE
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["batch_size"] == 8
    assert retry.params == trials[0].params
    assert sum(t.state == COMPLETE for t in trials) == 2


def test_out_of_memory_is_not_retried_when_the_study_says_so(boom_study, tmp_path):
    result = run_study(
        boom_study("oom", training={"retry_oom": False}), out_dir=tmp_path / "out", progress=False
    )
    trials = _trials(result)
    assert trials[0].state == FAIL and trials[0].user_attrs["failure_kind"] == "oom"
    assert all("retry_of" not in t.user_attrs and "batch_size" not in t.user_attrs for t in trials[1:])
    assert [t.state for t in trials[1:]] == [COMPLETE, COMPLETE]


def test_plugin_exception_names_the_plugin_its_provider_and_the_method(boom_study, tmp_path):
    result = run_study(boom_study("raise"), out_dir=tmp_path / "out", progress=False)
    trials = _trials(result)
    failure = trials[0].user_attrs["failure"]
    assert trials[0].state == FAIL and trials[0].user_attrs["failure_kind"] == "plugin"
    assert "regularizer plugin 'boom'" in failure
    assert "boom_plugin.py" in failure  # the provider: the plugin file
    assert "regularizer.penalty()" in failure and "the penalty exploded" in failure
    assert [t.state for t in trials[1:]] == [COMPLETE, COMPLETE]


def test_non_finite_loss_fails_the_trial_and_the_study_goes_on(boom_study, tmp_path):
    result = run_study(boom_study("nan"), out_dir=tmp_path / "out", progress=False)
    trials = _trials(result)
    assert trials[0].state == FAIL and trials[0].user_attrs["failure_kind"] == "non_finite"
    assert "loss became non-finite" in trials[0].user_attrs["failure"]
    assert sum(t.state == COMPLETE for t in trials) == 2 and all(t.value is not None for t in trials[1:])


def _corrupt_copy(shapes_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    bad = data / "train" / "circle" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return data, bad


def test_corrupt_image_fails_the_trial_naming_the_file(write_study, shapes_dir, tmp_path):
    data, bad = _corrupt_copy(shapes_dir, tmp_path)
    study = write_study(data={"train": str(data / "train"), "val": str(data / "val")}, search={"n_trials": 1})
    result = run_study(study, out_dir=tmp_path / "out", progress=False)
    trials = _trials(result)
    assert len(trials) == 1 and trials[0].state == FAIL  # every trial would read it: stop at once
    assert trials[0].user_attrs["failure_kind"] == "data"
    assert trials[0].user_attrs["failure_scope"] == "study"
    assert "broken.png" in trials[0].user_attrs["failure"]
    assert result.stopped and "broken.png" in result.stopped and "broken.png" in str(result.problem())


def test_corrupt_image_skipped_and_counted(write_study, shapes_dir, tmp_path):
    data, bad = _corrupt_copy(shapes_dir, tmp_path)
    study = write_study(
        data={"train": str(data / "train"), "val": str(data / "val"), "on_bad_image": "skip"},
        search={"n_trials": 1},
    )
    result = run_study(study, out_dir=tmp_path / "out", progress=False)
    (trial,) = _trials(result)
    assert trial.state == COMPLETE and trial.user_attrs["skipped_images"] == 1
    assert result.study.user_attrs["skipped_images"]["count"] == 1
    assert str(bad) in result.study.user_attrs["skipped_images"]["examples"][0]


def test_worker_stops_on_a_config_or_plugin_error_before_any_trial(write_study, tmp_path):
    bad_config = write_study("bad.yaml", training={"epochs": 0})
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("def oops(:\n")
    bad_plugin = write_study("badplugin.yaml", plugins=[str(broken)])
    for study, expected in ((bad_config, "training.epochs"), (bad_plugin, "broken_plugin.py")):
        out = tmp_path / f"out-{study.stem}"
        proc = subprocess.run(
            [sys.executable, "-m", "tlsearch", "worker", str(study), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr
        assert not (out / "study.journal").exists()  # no study, no trial


def test_classify_and_oom_detection():
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory")
    assert is_oom(oom) and classify(oom)[0] == "oom"
    wrapped = RuntimeError("step failed")
    wrapped.__cause__ = oom
    assert is_oom(wrapped)
    assert not is_oom(ValueError("no"))
    assert classify(KeyboardInterrupt())[0] == "interrupted"


def test_guard_leaves_out_of_memory_and_pruning_unwrapped():
    from tlsearch.registry import get_plugin_manager
    from tlsearch.search.sampling import instantiate

    pm = get_plugin_manager()
    choices = {
        "backbone": "timm",
        "backbone.timm.model": "test_efficientnet",
        "backbone.timm.weights": "random",
        "head": "linear",
        "freezing": "linear_probe",
        "train.lr": 1e-3,
    }
    plugins: TrialPlugins = guard_plugins(instantiate(choices, pm.registry), pm.registry)

    def raising(exc):
        def fn(*a, **k):
            raise exc

        return fn

    for exc, expected in (
        (torch.cuda.OutOfMemoryError("x"), torch.cuda.OutOfMemoryError),
        (optuna.TrialPruned("p"), optuna.TrialPruned),
        (KeyError("k"), PluginCallError),
    ):
        plugins.head.build = raising(exc)  # type: ignore[method-assign]
        guard_plugins(plugins, pm.registry)
        with pytest.raises(expected) as info:
            plugins.head.build(4, 2)
        if expected is PluginCallError:
            assert "head plugin 'linear'" in str(info.value) and "head.build()" in str(info.value)
