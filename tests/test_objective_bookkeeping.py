"""The Objective's own bookkeeping, driven in-process: the real ``Objective`` on the tiny study of
conftest.py, a journal-file Optuna study, and the real trainer where training is the point (a
scripted ``fit_on_devices`` elsewhere, which calls the epoch callbacks as the trainer does and
returns a real ``FitResult``). What a plugin, the CLI's leaderboard or another worker relies on:
each trial end announced once with its state, value and kept metrics; the epoch callbacks' last
epoch, pruning and deadline; the failure attributes; the out-of-memory retry; a full disk or a
lost storage stopping the study; the checkpoint, the seeds and the counts recorded."""

from __future__ import annotations

import errno
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from safetensors.torch import load_file

from tlsearch import hookimpl
from tlsearch.data import load_splits
from tlsearch.errors import FailTrial, StorageUnavailable
from tlsearch.search import objective as objective_module
from tlsearch.search import trial_writes
from tlsearch.search.budget import DEADLINE_ATTR
from tlsearch.search.checkpoint import WEIGHTS_FILE, load_record
from tlsearch.search.failures import SCOPE_ATTR, TRACEBACK_ATTR, classify, instantiate_plugins
from tlsearch.search.objective import Objective
from tlsearch.search.recovery import WORKER_ATTR, WorkerIdentity
from tlsearch.search.sampling import build_model, data_choices
from tlsearch.search.study import open_study, prepare, with_data_size
from tlsearch.search.study_data import StudyData
from tlsearch.search.trial_writes import TrialWriter
from tlsearch.train import StopTraining, Trainer
from tlsearch.train.loop import FitResult

COMPLETE, PRUNED, FAIL = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)
WAITING = optuna.trial.TrialState.WAITING


class Recorder:
    """Hears the trial hooks as a plugin does, and the search's events as the CLI does."""

    def __init__(self) -> None:
        self.hooks: list[tuple[Any, ...]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def tlsearch_trial_start(self, trial: optuna.Trial) -> None:
        self.hooks.append(("start", trial.number))

    @hookimpl
    def tlsearch_epoch_end(self, trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        self.hooks.append(("epoch", trial.number, epoch, dict(metrics)))

    @hookimpl
    def tlsearch_trial_end(self, trial: optuna.Trial, state: str, value: float | None, metrics: dict) -> None:
        self.hooks.append(("end", trial.number, state, value, dict(metrics)))

    def on_event(self, name: str, **kw: Any) -> None:
        self.events.append((name, kw))

    def ends(self) -> list[tuple[Any, ...]]:
        return [hook[1:] for hook in self.hooks if hook[0] == "end"]

    def event_names(self) -> list[str]:
        return [name for name, _ in self.events]


class PruneAtEpoch:
    """An epoch-end hook that prunes the trial at ``epoch`` (as a plugin's own pruning rule would)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    @hookimpl
    def tlsearch_epoch_end(self, epoch: int) -> None:
        if epoch == self.epoch:
            raise optuna.TrialPruned(f"pruned by a plugin at epoch {epoch}")


class VetoEnd:
    """A trial-end hook that tries to fail every trial."""

    @hookimpl
    def tlsearch_trial_end(self, state: str) -> None:
        raise FailTrial(f"vetoed at {state}")


class VetoStart:
    @hookimpl
    def tlsearch_trial_start(self) -> None:
        raise FailTrial("not this one")


@dataclass
class Bench:
    objective: Objective
    study: optuna.Study
    recorder: Recorder

    def optimize(self, n_trials: int = 1) -> list[optuna.trial.FrozenTrial]:
        self.study.optimize(self.objective, n_trials=n_trials, catch=(Exception,))
        return self.trials()

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)

    def trial(self) -> optuna.Trial:
        """A started trial (its parameters sampled), for driving the epoch callbacks by hand."""
        trial = self.study.ask()
        trial.suggest_float("train.lr", 1e-3, 1e-2, log=True)
        return trial


@pytest.fixture
def bench(write_study, tmp_path: Path) -> Callable[..., Bench]:
    """``bench(plugins=..., budget=..., deadline=..., **sections)``: the real Objective of the tiny
    study (linear probe, no pruner unless ``search`` says so) over a journal study in ``tmp_path``."""

    def make(*, plugins: tuple[object, ...] = (), budget: int | None = None, **sections: Any) -> Bench:
        sections.setdefault("space", {"freezing": ["linear_probe"]})
        sections["search"] = {"pruner": "none", **sections.get("search", {})}
        config, pm, space, study_dir = prepare(write_study(**sections), out_dir=tmp_path / "out")
        recorder = Recorder()
        for index, plugin in enumerate((*plugins, recorder)):  # the recorder first to hear (LIFO)
            pm.register(plugin, name=f"test-plugin-{index}")
        train, val = load_splits(config.data, task=config.task, seed=0, resolve=config.resolve_path)
        data = StudyData(
            train, val, cache_dir=study_dir.cache, on_bad_image=config.data.on_bad_image, progress=False
        )
        data.check()
        space = with_data_size(space, config, data)
        study_dir.root.mkdir(parents=True, exist_ok=True)
        study = open_study(config, str(study_dir.root / "study.journal"))
        objective = Objective(
            config=config,
            space=space,
            pm=pm,
            data=data,
            study_dir=study_dir,
            on_event=recorder.on_event,
            budget=budget,
            heartbeat_interval=0,
            progress_interval=3600.0,  # progress is committed only with the trial's other writes
        )
        return Bench(objective, study, recorder)

    return make


def metrics_of(accuracy: float) -> dict[str, float]:
    return {"accuracy": accuracy, "loss": 1.0 - accuracy}


def script_fit(
    monkeypatch: pytest.MonkeyPatch,
    accuracies: list[float] = (0.5, 0.75),  # type: ignore[assignment]
    *,
    best_epoch: int = -1,
    stopped: str | None = None,
    extras: dict[str, Any] | None = None,
    raises: BaseException | None = None,
) -> list[int]:
    """Replace the training by a script: each epoch's callbacks with ``accuracies``, then a real
    ``FitResult`` keeping ``best_epoch`` (or raise ``raises`` before the first epoch). Returns the
    list of the calls' counts."""
    calls: list[int] = []

    def fit(trainer, train, val, *, devices, on_epoch_end, on_epoch_start, fit_epochs) -> FitResult:
        calls.append(1)
        if raises is not None:
            raise raises
        history = []
        for epoch, accuracy in enumerate(accuracies):
            on_epoch_start(epoch)
            history.append(metrics_of(accuracy))
            on_epoch_end(epoch, history[-1])
        return FitResult(
            history=history,
            metrics=dict(history[best_epoch]),
            seconds=0.01,
            used_feature_cache=False,
            precision="fp32",
            extras=dict(extras or {}),
            best_epoch=best_epoch % len(history),
            stopped=stopped,
        )

    monkeypatch.setattr(objective_module, "fit_on_devices", fit)
    return calls


def counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(1))
    return calls


# --- a trial that trains for real ---------------------------------------------------------------


def test_a_trained_trial_records_its_bookkeeping_and_is_announced_once(
    bench, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Bugs caught: any of the trial's staged attributes (plugins, work, best epoch, seed, metrics,
    per-class rows, confusion) or its intermediate values not recorded, the seconds measured the
    wrong way, the checkpoint not saved, a hook or event not heard (or heard twice), a stop
    logged for a trial that ran all its epochs, CUDA's cache emptied on a CPU trial."""
    empty_cache = counting(monkeypatch, torch.cuda, "empty_cache")
    b = bench(space={"freezing": ["full_finetune"]})  # (a linear probe may converge in one epoch)
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="tlsearch"):
        (trial,) = b.optimize(1)
    elapsed = time.perf_counter() - started
    assert trial.state == COMPLETE, trial.user_attrs.get("failure")
    attrs = trial.user_attrs
    history = attrs["history"]
    assert len(history) == 2 and attrs["epochs_run"] == 2 and attrs["stopped"] is None
    assert attrs["metrics"] == history[attrs["best_epoch"]] and trial.value == attrs["metrics"]["accuracy"]
    assert trial.intermediate_values == {0: history[0]["accuracy"], 1: history[1]["accuracy"]}
    assert attrs["plugins"] == instantiate_plugins(attrs["choices"], b.objective.pm.registry).names()
    assert attrs["work"]["epochs"] == 2 and attrs["work"]["gflop"] > 0
    assert attrs["seed"] == 0 and attrs[WORKER_ATTR] == b.objective.identity
    assert 0 < attrs["seconds"] <= elapsed
    assert [row["class"] for row in attrs["per_class"]] == b.objective.data.labels
    assert "confusion" in attrs and "worst_images" in attrs
    assert not any("stopped after epoch" in r.getMessage() for r in caplog.records)
    assert empty_cache == []
    record = load_record(b.objective.study_dir.trial_dir(0))
    assert record.value == trial.value and record.metrics == attrs["metrics"]
    assert (b.objective.study_dir.trial_dir(0) / WEIGHTS_FILE).is_file()

    assert b.recorder.hooks == [
        ("start", 0),
        ("epoch", 0, 0, history[0]),
        ("epoch", 0, 1, history[1]),
        ("end", 0, "COMPLETE", trial.value, attrs["metrics"]),
    ]
    assert b.recorder.event_names() == ["trial_start", "epoch_end", "epoch_end", "trial_end"]
    (_, start), (_, first), (_, second), (_, end) = b.recorder.events
    assert start["choices"] == attrs["choices"] and [first["epoch"], second["epoch"]] == [0, 1]
    assert second["metrics"] == history[1]
    assert (end["state"], end["value"], end["metrics"]) == ("COMPLETE", trial.value, attrs["metrics"])


# --- scripted training ---------------------------------------------------------------------------


def test_the_trial_end_carries_the_best_epochs_metrics_and_the_stop_is_logged(
    bench, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Bugs caught: the last epoch's metrics announced instead of the kept one's; the stop's log
    line naming the wrong epochs; the EMA facts dropped; per-class rows or the confusion read from
    a result that has none (a crash)."""
    script_fit(monkeypatch, [0.9, 0.5], best_epoch=0, stopped="patience", extras={"ema": {"used": True}})
    b = bench()
    with caplog.at_level(logging.INFO, logger="tlsearch"):
        (trial,) = b.optimize(1)
    assert trial.state == COMPLETE, trial.user_attrs.get("failure")
    assert trial.value == 0.9 and trial.user_attrs["metrics"] == metrics_of(0.9)
    assert (trial.user_attrs["best_epoch"], trial.user_attrs["epochs_run"]) == (0, 2)
    assert trial.user_attrs["stopped"] == "patience" and trial.user_attrs["ema"] == {"used": True}
    assert "per_class" not in trial.user_attrs and "confusion" not in trial.user_attrs
    assert b.recorder.ends() == [(0, "COMPLETE", 0.9, metrics_of(0.9))]
    assert b.recorder.events[-1][1]["metrics"] == metrics_of(0.9)
    assert "trial 0 stopped after epoch 1 (no improvement: patience); kept epoch 0" in caplog.text


@pytest.mark.parametrize("seed", [0, 7])
def test_each_trial_builds_its_model_from_the_study_and_trial_seeds(
    bench, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """The checkpoint of an untrained (scripted) trial holds exactly the weights that the study's
    seed (backbone) and the trial's seed (head: study seed + trial number) build. Bugs caught:
    the trial seed's arithmetic, the study seed's default, either seed not reaching the model."""
    script_fit(monkeypatch)
    b = bench(search={"seed": seed})
    trials = b.optimize(2)
    assert [t.state for t in trials] == [COMPLETE, COMPLETE]
    assert [t.user_attrs["seed"] for t in trials] == [seed, seed + 1]
    config, trial = b.objective.config, trials[1]
    choices = trial.user_attrs["choices"]
    fresh = build_model(
        instantiate_plugins(choices, b.objective.pm.registry),
        num_outputs=b.objective.data.num_outputs,
        **data_choices(choices, config.data),
        backbone_seed=seed,
        head_seed=seed + 1,
    ).state_dict()
    saved = load_file(b.objective.study_dir.trial_dir(1) / WEIGHTS_FILE)
    assert saved and all(torch.equal(tensor, fresh[name]) for name, tensor in saved.items())


def test_the_checkpoint_is_shared_to_the_artefact_store(bench, monkeypatch, tmp_path: Path) -> None:
    script_fit(monkeypatch)
    b = bench(artifacts="shared")
    (trial,) = b.optimize(1)
    assert trial.state == COMPLETE, trial.user_attrs.get("failure")
    shared = tmp_path / "shared" / "trials" / "0000"
    assert (shared / WEIGHTS_FILE).is_file() and load_record(shared).value == trial.value


def test_a_cuda_trial_empties_the_cache_once_its_checkpoint_is_saved(bench, monkeypatch) -> None:
    """(The training runs on the CPU; only the objective believes its device is CUDA.)"""
    script_fit(monkeypatch)
    b = bench()
    b.objective.device = torch.device("cuda")
    monkeypatch.setattr(
        objective_module,
        "Trainer",
        lambda model, **kw: Trainer(model, **{**kw, "device": torch.device("cpu")}),
    )
    saved: list[bool] = []
    checkpoint = b.objective.study_dir.trial_dir(0) / WEIGHTS_FILE
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: saved.append(checkpoint.is_file()))
    (trial,) = b.optimize(1)
    assert trial.state == COMPLETE and trial.user_attrs["device"] == "cuda"
    assert saved == [True]


def test_constraints_and_multi_objective_values(bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bugs caught: the constraint values not recorded; the trial end announcing the second
    objective's value as the score; a multi-objective trial reporting intermediate values (Optuna
    cannot prune it)."""
    script_fit(monkeypatch, [0.6, 0.8])
    b = bench(search={"objectives": ["accuracy", "params"], "constraints": {"params": 10}})
    (trial,) = b.optimize(1)
    assert trial.state == COMPLETE, trial.user_attrs.get("failure")
    params = trial.user_attrs["params"]
    assert trial.values == [0.8, params] and trial.user_attrs["constraints"] == [params - 10]
    assert trial.intermediate_values == {}
    assert b.recorder.ends() == [(0, "COMPLETE", 0.8, metrics_of(0.8))]


def test_skipped_images_are_counted_and_five_named(
    bench, monkeypatch, shapes_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    broken = [data / "train" / "circle" / f"broken{i}.png" for i in range(5)] + [
        data / "val" / "circle" / "bad.png"
    ]
    for path in broken:
        path.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    script_fit(monkeypatch)
    b = bench(data={"train": str(data / "train"), "val": str(data / "val"), "on_bad_image": "skip"})
    (trial,) = b.optimize(1)
    assert trial.state == COMPLETE and trial.user_attrs["skipped_images"] == 6
    skipped = b.study.user_attrs["skipped_images"]
    assert skipped["count"] == 6 and len(skipped["examples"]) == 5
    assert all(Path(path) in broken for path in skipped["examples"])


# --- ends other than COMPLETE ----------------------------------------------------------------------


def test_a_pruned_trial_keeps_its_progress_and_its_end_cannot_be_vetoed(bench, monkeypatch) -> None:
    """A plugin prunes at epoch 1 of 3; another plugin's FailTrial at the trial end is too late.
    Bugs caught: the epoch hook's TrialPruned swallowed, the staged history not committed, the
    PRUNED end not announced or with the wrong epoch's metrics, a trial-end veto failing it."""
    script_fit(monkeypatch, [0.3, 0.4, 0.9])
    b = bench(training={"epochs": 3}, plugins=(PruneAtEpoch(1), VetoEnd()))
    (trial,) = b.optimize(1)
    assert trial.state == PRUNED
    assert trial.user_attrs["history"] == [metrics_of(0.3), metrics_of(0.4)]
    assert trial.intermediate_values == {0: 0.3, 1: 0.4}
    assert b.recorder.ends() == [(0, "PRUNED", None, metrics_of(0.4))]
    # (the hook that pruned at epoch 1 ran before that epoch's event)
    assert b.recorder.event_names() == ["trial_start", "epoch_end", "trial_end"]
    assert b.recorder.events[-1][1]["state"] == "PRUNED" and b.recorder.events[-1][1]["value"] is None


def test_a_plugin_may_fail_a_trial_at_its_start(bench, monkeypatch) -> None:
    script_fit(monkeypatch)
    b = bench(plugins=(VetoStart(),))
    (trial,) = b.optimize(1)
    assert (
        trial.state == FAIL
        and "failed the trial in tlsearch_trial_start: not this one" in trial.user_attrs["failure"]
    )
    assert "history" not in trial.user_attrs


def test_a_plugin_may_fail_a_trial_at_its_complete_end(bench, monkeypatch) -> None:
    script_fit(monkeypatch)
    vetoed = bench(plugins=(VetoEnd(),))
    (trial,) = vetoed.optimize(1)
    assert trial.state == FAIL
    assert "failed the trial in tlsearch_trial_end: vetoed at COMPLETE" in trial.user_attrs["failure"]
    reason = trial.user_attrs["failure"]
    assert [end[1:3] for end in vetoed.recorder.ends()] == [("COMPLETE", 0.75), ("FAIL", None)]
    assert vetoed.recorder.ends()[1][3] == {"failure": reason}


@pytest.mark.parametrize(
    ("error", "kind_of", "scope"),
    [
        (ValueError("the fit exploded"), "the fit exploded", None),
        (OSError(errno.ENOSPC, "No space left on device", "trials/0000/model.safetensors"), "space", "study"),
    ],
)
def test_a_failed_trial_records_why_frees_memory_and_is_announced(
    bench, monkeypatch, error: BaseException, kind_of: str, scope: str | None
) -> None:
    script_fit(monkeypatch, raises=error)
    freed = counting(monkeypatch, objective_module, "free_accelerator_memory")
    b = bench()
    (trial,) = b.optimize(1)
    attrs = trial.user_attrs
    assert trial.state == FAIL and kind_of in attrs["failure"]
    assert attrs["failure_kind"] == classify(error)[0]
    assert type(error).__name__ in attrs[TRACEBACK_ATTR]
    assert attrs.get(SCOPE_ATTR) == scope
    assert freed == [1]
    assert b.recorder.ends() == [(0, "FAIL", None, {"failure": attrs["failure"]})]
    end = b.recorder.events[-1]
    assert end[0] == "trial_end" and (end[1]["state"], end[1]["value"]) == ("FAIL", None)


def test_a_non_finite_score_fails_the_trial(bench, monkeypatch) -> None:
    script_fit(monkeypatch, [0.5, math.nan])
    b = bench()
    (trial,) = b.optimize(1)
    assert trial.state == FAIL and trial.user_attrs["failure_kind"] == "non_finite"
    assert "accuracy is nan" in trial.user_attrs["failure"]


def test_out_of_memory_is_retried_once_at_half_the_batch(bench, monkeypatch) -> None:
    """Every attempt runs out of memory. Bugs caught: the retry's batch size (5 // 2 == 2, an int),
    a retry retried again, other trials of the study not run after a failure."""
    script_fit(monkeypatch, raises=torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"))
    b = bench(training={"batch_size": 5})
    trials = b.optimize(3)
    assert [t.state for t in trials] == [FAIL, FAIL, FAIL, WAITING]
    first, retry, fresh, waiting = trials
    assert all(t.user_attrs["failure_kind"] == "oom" for t in trials[:3])
    assert retry.user_attrs["retry_of"] == 0 and retry.params == first.params
    assert retry.user_attrs["batch_size"] == 2 and type(retry.user_attrs["batch_size"]) is int
    assert "retry_of" not in fresh.user_attrs  # the retry's own out-of-memory is not retried
    assert waiting.user_attrs["retry_of"] == 2 and waiting.user_attrs["batch_size"] == 2


def test_out_of_memory_at_batch_one_is_not_retried_and_at_two_is(bench, monkeypatch) -> None:
    script_fit(monkeypatch, raises=torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"))
    b = bench()
    b.study.enqueue_trial({}, user_attrs={"batch_size": 1})
    b.study.enqueue_trial({}, user_attrs={"batch_size": 2})
    trials = b.optimize(2)
    assert [t.state for t in trials] == [FAIL, FAIL, WAITING]
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].user_attrs["batch_size"] == 1


# --- the study stops ---------------------------------------------------------------------------------


def test_a_full_disk_stops_the_study(bench, monkeypatch) -> None:
    """The storage's disk fills when the trial's results are written (and stays full)."""
    script_fit(monkeypatch)
    real = trial_writes.commit_trial_writes

    def commit(storage, trial_id, **groups):
        if {"metrics", "failure"} & set(groups.get("attrs") or {}):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(storage, trial_id, **groups)

    monkeypatch.setattr(trial_writes, "commit_trial_writes", commit)
    b = bench()
    trials = b.optimize(3)
    assert [t.state for t in trials] == [FAIL]
    assert b.objective.disk_full is not None and b.objective.storage_lost is None


def test_a_lost_storage_records_the_failure_and_stops_the_study(bench, monkeypatch) -> None:
    """The storage proxy is gone for the results' write and back for the failure's."""
    script_fit(monkeypatch)
    real = trial_writes.commit_trial_writes
    lost: list[int] = []

    def commit(storage, trial_id, **groups):
        if "metrics" in (groups.get("attrs") or {}) and not lost:
            lost.append(1)
            raise StorageUnavailable("the storage proxy is gone")
        return real(storage, trial_id, **groups)

    monkeypatch.setattr(trial_writes, "commit_trial_writes", commit)
    b = bench()
    trials = b.optimize(3)
    assert [t.state for t in trials] == [FAIL]
    assert "the storage proxy is gone" in trials[0].user_attrs["failure"]
    assert b.objective.storage_lost is not None and b.objective.disk_full is None


def test_a_trial_past_the_budget_is_skipped_untrained_and_stops_the_study(bench, monkeypatch) -> None:
    fits = script_fit(monkeypatch)
    b = bench(budget=1)
    b.study.add_trial(optuna.trial.create_trial(value=0.5))  # another worker finished the budget
    trials = b.optimize(3)
    assert [t.state for t in trials] == [COMPLETE, FAIL]
    skipped = trials[1].user_attrs
    assert skipped["skipped"] is True and skipped["failure_kind"] == "skipped"
    assert fits == [] and b.recorder.hooks == []


def test_a_trial_sweeps_the_running_trial_of_a_dead_worker(bench, monkeypatch) -> None:
    script_fit(monkeypatch)
    b = bench()
    storage = b.study._storage
    dead = storage.create_new_trial(b.study._study_id)
    identity = {**WorkerIdentity.current().to_dict(), "boot": "a boot before the machine restarted"}
    storage.set_trial_user_attr(dead, WORKER_ATTR, identity)
    trials = b.optimize(1)
    assert [t.state for t in trials] == [FAIL, COMPLETE, WAITING]
    assert "worker died" in trials[0].user_attrs["failure"]
    assert trials[2].user_attrs["retry_of"] == 0


# --- the epoch callbacks ------------------------------------------------------------------------------


def test_pruning_is_asked_after_every_epoch_but_the_last(bench) -> None:
    b = bench()
    trial = b.trial()
    writer = TrialWriter(trial, interval=3600.0)
    history: list[dict[str, float]] = []
    on_epoch_end = b.objective.epoch_callback(trial, writer, history)  # the study's 2 epochs
    trial.should_prune = lambda: False  # type: ignore[method-assign]
    on_epoch_end(0, metrics_of(0.5))
    trial.should_prune = lambda: True  # type: ignore[method-assign]
    on_epoch_end(1, metrics_of(0.6))  # the last: nothing to save by pruning
    assert history == [metrics_of(0.5), metrics_of(0.6)]
    assert trial.user_attrs["history"] == history
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 0 with accuracy=0.7"):
        b.objective.epoch_callback(trial, writer, [])(0, metrics_of(0.7))
    b.objective.epoch_callback(trial, writer, [], epochs=1)(0, metrics_of(0.7))  # one epoch: the last


def test_a_multi_objective_trial_is_never_pruned(bench) -> None:
    b = bench(search={"objectives": ["accuracy", "params"]})
    trial = b.trial()
    trial.should_prune = lambda: True  # type: ignore[method-assign]
    b.objective.epoch_callback(trial, TrialWriter(trial), [])(0, metrics_of(0.5))
    assert trial._cached_frozen_trial.intermediate_values == {}


def test_the_deadline_ends_training_after_an_epoch_but_the_last(bench, monkeypatch) -> None:
    monkeypatch.setattr(objective_module, "wall_clock", lambda: 1000.0)
    b = bench()
    trial = b.trial()
    writer = TrialWriter(trial)

    def epoch(number: int) -> None:
        b.objective.epoch_callback(trial, writer, [])(number, metrics_of(0.5))

    epoch(0)  # no deadline
    b.objective.deadline = 1000.5
    epoch(0)
    b.objective.deadline = 1000.0  # reached
    with pytest.raises(StopTraining) as stop:
        epoch(0)
    assert stop.value.reason == "timeout"
    epoch(1)  # the last epoch ends anyway
    b.objective.deadline = 5000.0
    b.study.set_user_attr(DEADLINE_ATTR, 999.0)  # the study's is earlier: it counts
    with pytest.raises(StopTraining):
        epoch(0)


def test_the_epochs_that_fit_before_the_deadline(bench, monkeypatch) -> None:
    b = bench()
    trial = b.trial()
    assert b.objective.epochs_fitter(trial) is None  # no deadline
    b.objective.deadline = time.time() + 3600  # the real clock
    assert 3500 <= b.objective.epochs_fitter(trial)(0, 1.0) <= 3601
    monkeypatch.setattr(objective_module, "wall_clock", lambda: 1000.0)
    b.objective.deadline = 1010.0
    fit = b.objective.epochs_fitter(trial)
    assert fit(2, 3.0) == 6  # epochs 0-2 done, 3 more of 3 s fit in 10 s
    assert fit(0, 0.5) == 21
    assert fit(0, 0.0) is None and fit(0, -1.0) is None  # no timing yet
    b.objective.deadline = 1001.0
    assert b.objective.epochs_fitter(trial)(0, 0.1) == 10  # 0.1 s is a hair over: 9 more fit in 1 s
    b.objective.deadline = 990.0  # passed: no more epochs
    assert b.objective.epochs_fitter(trial)(3, 0.5) == 4
