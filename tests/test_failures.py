"""The failure policy: each kind of failure is recorded on its trial (FAIL + ``failure`` +
``failure_kind``) and the next trial runs; config and plugin errors stop before any trial."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch

from tlsearch.errors import ConfigError, DataError, PluginCallError, WriteError
from tlsearch.search import run_study
from tlsearch.search.failures import classify, guard_plugins, is_oom, study_wide
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
        hyperparameters = {"mode": Categorical(("oom", "raise", "nan", "shape"))}

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
            if self.first and self.mode == "shape":
                return torch.zeros(3)
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
    assert "regularizer 'boom'" in trials[0].user_attrs["failure"]
    assert "regularizer.penalty()" in trials[0].user_attrs["failure"]
    assert sum(t.state == COMPLETE for t in trials) == 2 and all(t.value is not None for t in trials[1:])


def test_a_non_scalar_penalty_names_its_regularizer(boom_study, tmp_path):
    result = run_study(boom_study("shape"), out_dir=tmp_path / "out", progress=False)
    failure = _trials(result)[0].user_attrs["failure"]
    assert "regularizer plugin 'boom'" in failure and "regularizer.penalty()" in failure
    assert "shape (3,)" in failure and "boom_plugin.py" in failure


def _corrupt_copy(shapes_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    bad = data / "train" / "circle" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return data, bad


def test_corrupt_image_stops_the_study_before_any_trial_naming_the_file(write_study, shapes_dir, tmp_path):
    data, bad = _corrupt_copy(shapes_dir, tmp_path)
    study = write_study(data={"train": str(data / "train"), "val": str(data / "val")}, search={"n_trials": 1})
    with pytest.raises(DataError, match="broken.png"):  # every image is checked once, up front
        run_study(study, out_dir=tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("study.*"))


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


def test_a_full_disk_fails_the_study_not_one_trial_after_another():
    # A checkpoint that cannot be written (the disk is full) would fail every later trial too.
    full = OSError(errno.ENOSPC, "No space left on device")
    assert study_wide(WriteError.from_os_error("trials/0001/model.safetensors", full), None)  # type: ignore[arg-type]
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = full
    assert study_wide(wrapped, None)  # type: ignore[arg-type]
    assert not study_wide(OSError(errno.EIO, "I/O error"), None)  # type: ignore[arg-type]


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


# Heads that fail in the way their ``mode`` (a module constant written by the test) says.
HEADS_PLUGIN = textwrap.dedent('''
    import sys
    from torch import nn
    from tlsearch import hookimpl
    from tlsearch.kinds import Head

    MODE = "{mode}"

    class Greedy(nn.Module):
        """Out of host memory on training batches larger than 8 (a real MemoryError); not a plain
        nn.Linear, so a linear probe trains it by epochs instead of solving it."""
        def __init__(self, in_features, out_features):
            super().__init__()
            self.fc = nn.Linear(in_features, out_features)

        def forward(self, x):
            if self.training and len(x) > 8:
                raise MemoryError("cannot allocate a batch of %d (simulated)" % len(x))
            return self.fc(x)

    class Broken(Head):
        """Fails as MODE says: in build (always), by sys.exit in build, in __init__, or a greedy forward."""
        name = "broken"

        def __init__(self, **params):
            if MODE == "init":
                raise ValueError("the head cannot start")
            super().__init__(**params)

        def build(self, in_features, out_features):
            if MODE == "build":
                raise RuntimeError("the head driver is missing")
            if MODE == "exit":
                sys.exit(3)
            return Greedy(in_features, out_features)

    @hookimpl
    def tlsearch_register_heads(register):
        register.add(Broken)
''')


@pytest.fixture
def head_study(write_study, tmp_path: Path):
    def make(mode: str, *, n_trials: int):
        plugin = tmp_path / f"heads_{mode}.py"
        plugin.write_text(HEADS_PLUGIN.replace("{mode}", mode))
        return write_study(
            f"{mode}.yaml",
            plugins=[str(plugin)],
            space={"head": ["broken"], "freezing": ["linear_probe"], "regularizers": {}},
            search={"pruner": "none", "n_trials": n_trials},
        )

    return make


def test_host_out_of_memory_is_oom_and_retried_at_half_the_batch(head_study, tmp_path):
    result = run_study(head_study("memory", n_trials=1), out_dir=tmp_path / "out", progress=False)
    first, retry = _trials(result)
    assert first.state == FAIL and first.user_attrs["failure_kind"] == "oom"
    assert "MemoryError" in first.user_attrs["failure"]
    assert retry.state == COMPLETE and retry.user_attrs["batch_size"] == 8
    assert retry.user_attrs["retry_of"] == 0 and retry.params == first.params


def test_cpu_allocator_messages_count_as_out_of_memory():
    assert is_oom(
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    )
    assert is_oom(RuntimeError("not enough memory: you tried to allocate 12 GB"))
    assert is_oom(MemoryError()) and classify(MemoryError("x"))[0] == "oom"


def test_a_build_that_always_fails_stops_the_study_at_once_with_exit_1(head_study, tmp_path):
    from click.testing import CliRunner

    from tlsearch.cli import main

    study = head_study("build", n_trials=10)
    out = tmp_path / "out"
    cli = CliRunner().invoke(main, ["run", str(study), "--out", str(out), "--console", "plain"])
    assert cli.exit_code == 1, cli.output
    assert "every trial would fail the same way" in cli.output
    assert "head plugin 'broken'" in cli.output and "the head driver is missing" in cli.output
    from tlsearch.search.study import open_study
    from tlsearch.search.study_dir import StudyDir

    config = StudyDir(out).load_config()
    trials = open_study(config, str(out / "study.journal"), create=False).trials
    trials = [t for t in trials if t.state != optuna.trial.TrialState.WAITING]  # warm-start entries left
    assert len(trials) == 1 and trials[0].user_attrs["failure_scope"] == "study"
    assert 'raise RuntimeError("the head driver is missing")' in trials[0].user_attrs["failure_traceback"]


def test_sys_exit_in_a_plugin_fails_its_trial_instead_of_ending_the_process(head_study, tmp_path):
    result = run_study(head_study("exit", n_trials=3), out_dir=tmp_path / "out", progress=False)
    (trial,) = _trials(result)  # the same in every trial: the study stopped
    assert trial.state == FAIL and trial.user_attrs["failure_kind"] == "plugin"
    assert "head plugin 'broken'" in trial.user_attrs["failure"]
    assert "sys.exit(3)" in trial.user_attrs["failure"]
    assert result.problem() and "sys.exit(3)" in str(result.problem())


def test_a_plugin_init_that_raises_names_the_plugin(head_study, tmp_path):
    # Each plugin is instantiated at the corners of its space when the study is read, so an
    # __init__ that always raises stops the study before any trial, naming the plugin.
    with pytest.raises(ConfigError) as info:
        run_study(head_study("init", n_trials=3), out_dir=tmp_path / "out", progress=False)
    message = str(info.value)
    assert "head 'broken'" in message and "the head cannot start" in message
    assert not (tmp_path / "out").exists()


def test_a_failure_that_depends_on_the_sampled_values_does_not_stop_the_study(boom_study, tmp_path):
    result = run_study(boom_study("raise"), out_dir=tmp_path / "out", progress=False)
    assert result.stopped is None and result.problem() is None
    assert "failure_scope" not in _trials(result)[0].user_attrs
    assert "the penalty exploded" in _trials(result)[0].user_attrs["failure_traceback"]
