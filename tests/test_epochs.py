"""Epochs that are not wasted: a trial keeps its best epoch's weights (trainer, checkpoint, value),
patience stops a trial that stopped improving (complete, not failed), ``search.timeout`` ends the
running trial at the next epoch boundary, and an epoch's cost is work, not seconds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import load_file
from tlsearch_builtins.freezing._static import FullFinetune, LinearProbe

from tests.conftest import decode_shapes
from tlsearch.config import parse_config
from tlsearch.data import DecodedImages
from tlsearch.errors import ConfigError
from tlsearch.testing._tiny import tiny_transfer_model
from tlsearch.train import Trainer, TrainSettings
from tlsearch.train import loop as loop_module
from tlsearch.train.best import BestEpoch
from tlsearch.train.work import epoch_work

COMPLETE = optuna.trial.TrialState.COMPLETE


@pytest.fixture(scope="module")
def data(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[DecodedImages, DecodedImages]:
    return decode_shapes(shapes_dir, tmp_path_factory.mktemp("images"))


def scripted_accuracy(monkeypatch: pytest.MonkeyPatch, values: list[float]) -> list[dict[str, torch.Tensor]]:
    """Make each epoch's validation accuracy the next of ``values`` (the real evaluation runs, its
    accuracy is replaced); returns the weights each evaluation saw, one state dict per epoch."""
    seen: list[dict[str, torch.Tensor]] = []
    real = loop_module.Trainer._evaluate

    def evaluate(self: Trainer, source, *, cached: bool) -> dict[str, float]:
        metrics = real(self, source, cached=cached)
        seen.append({k: v.detach().clone().cpu() for k, v in self.model.state_dict().items()})
        metrics["accuracy"] = values[len(seen) - 1]
        metrics["val_loss"] = 1.0  # a tie in accuracy is then a tie (a lower val_loss would break it)
        return metrics

    monkeypatch.setattr(loop_module.Trainer, "_evaluate", evaluate)
    return seen


def _trainer(strategy=None, **settings) -> Trainer:
    return Trainer(
        tiny_transfer_model(num_outputs=4, seed=0),
        strategy=strategy or FullFinetune(),
        num_outputs=4,
        settings=TrainSettings(**{"epochs": 3, "batch_size": 8, "lr": 1e-2, **settings}),
    )


def test_fit_keeps_the_best_epochs_weights_not_the_last(data, monkeypatch) -> None:
    seen = scripted_accuracy(monkeypatch, [0.5, 0.9, 0.6])
    trainer = _trainer()
    result = trainer.fit(*data)
    assert result.best_epoch == 1 and result.metrics["accuracy"] == 0.9 and len(result.history) == 3
    assert result.stopped is None and result.extras["best_epoch"] == 1
    kept = trainer.model.state_dict()
    assert not torch.equal(seen[1]["head.weight"], seen[2]["head.weight"])  # the last epoch did change it
    for name, tensor in seen[1].items():
        torch.testing.assert_close(kept[name].cpu(), tensor, rtol=0, atol=0, msg=name)


def test_a_minimised_metric_keeps_its_lowest_epoch(data) -> None:
    trainer = _trainer(select_metric="val_loss", lr=0.5, epochs=3)  # a large lr: the loss moves around
    result = trainer.fit(*data)
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == losses.index(min(losses)) and result.metrics["val_loss"] == min(losses)


def test_patience_stops_a_trial_that_stopped_improving(data, monkeypatch) -> None:
    scripted_accuracy(monkeypatch, [0.5, 0.7, 0.6, 0.7, 0.95, 0.95])
    result = _trainer(epochs=6, patience=2).fit(*data)
    # epoch 1 is the best; epochs 2 and 3 do not beat it (a tie is no improvement): stop after 3
    assert len(result.history) == 4 and result.stopped == "patience" and result.best_epoch == 1
    assert result.extras["stopped"] == {"reason": "patience", "after_epoch": 3}


def test_without_patience_every_epoch_runs(data, monkeypatch) -> None:
    scripted_accuracy(monkeypatch, [0.9, 0.5, 0.5, 0.5])
    # a cached probe trained by epochs: only the head kept (a solved one ends once it has converged)
    result = _trainer(epochs=4, strategy=LinearProbe(), solve_probe=False).fit(*data)
    assert len(result.history) == 4 and result.stopped is None and result.best_epoch == 0


def test_a_tie_in_the_metric_goes_to_the_lower_validation_loss() -> None:
    best = BestEpoch("accuracy", maximize=True)
    state = {"w": torch.zeros(1)}
    assert best.offer(0, {"accuracy": 0.75, "val_loss": 0.9}, lambda: state)
    assert not best.offer(1, {"accuracy": 0.75, "val_loss": 0.95}, lambda: state)
    assert best.offer(2, {"accuracy": 0.75, "val_loss": 0.5}, lambda: state) and best.epoch == 2
    assert not best.offer(3, {"accuracy": 0.5, "val_loss": 0.1}, lambda: state)


def test_patience_must_be_at_least_one() -> None:
    base = {"name": "x", "data": {"folder": "."}, "space": {"backbone": {"timm": {"model": "test_resnet"}}}}
    with pytest.raises(ConfigError, match="patience"):
        parse_config({**base, "training": {"patience": 0}})


def test_a_study_checkpoints_and_reports_the_best_epoch_and_patience_completes_the_trial(
    write_study, tmp_path, monkeypatch
) -> None:
    from tlsearch.search import run_study

    seen = scripted_accuracy(monkeypatch, [0.5, 0.9, 0.6, 0.6, 0.99])
    path = write_study(
        space={"freezing": ["full_finetune"], "regularizers": {}},
        training={"epochs": 5, "patience": 2, "lr": 1e-2},
        search={"n_trials": 1, "pruner": "none"},
    )
    out = tmp_path / "out"
    study = run_study(path, out_dir=out, progress=False).study
    (trial,) = study.trials
    assert trial.state == COMPLETE and trial.value == 0.9  # the best epoch's, not the last's (0.6)
    assert trial.user_attrs["best_epoch"] == 1 and trial.user_attrs["epochs_run"] == 4
    assert trial.user_attrs["stopped"] == "patience" and trial.user_attrs["metrics"]["accuracy"] == 0.9
    folder = out / "trials" / f"{trial.number:04d}"
    weights = load_file(str(folder / "model.safetensors"))
    for name, tensor in seen[1].items():  # the checkpoint holds epoch 1's weights (export reads it)
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0, msg=name)
    head = next(k for k in seen[1] if k.startswith("head.") and k.endswith("weight"))
    assert not torch.equal(weights[head], seen[3][head])
    record = json.loads((folder / "trial.json").read_text())
    assert record["value"] == 0.9 and record["info"]["best_epoch"] == 1
    ends = [json.loads(line) for line in (out / "trail.jsonl").read_text().splitlines()]
    (end,) = [e for e in ends if e["event"] == "trial_end"]
    assert end["best_epoch"] == 1 and end["stopped"] == "patience" and end["metrics"]["accuracy"] == 0.9
    work = trial.user_attrs["work"]  # what the cost-aware pruner reads: the 4 epochs' GFLOP
    assert work["epochs"] == 4 and work["gflop"] > 0


def test_the_timeout_ends_the_running_trial_at_the_next_epoch_boundary(write_study, tmp_path) -> None:
    from tlsearch.search import run_study

    def slow_first_epoch(name: str, **kw) -> None:
        if name == "epoch_end" and kw["epoch"] == 0:
            time.sleep(1.2)  # past the study's 1 s timeout, whatever the machine's speed

    path = write_study(
        space={"freezing": ["full_finetune"], "regularizers": {}},
        training={"epochs": 4, "lr": 1e-2},
        search={"n_trials": 3, "timeout": 1, "pruner": "none"},
    )
    study = run_study(path, out_dir=tmp_path / "out", progress=False, on_event=slow_first_epoch).study
    (trial,) = study.trials  # no second trial starts after the deadline
    assert trial.state == COMPLETE and trial.user_attrs["stopped"] == "timeout"
    assert trial.user_attrs["epochs_run"] == 1 and len(trial.user_attrs["history"]) == 1
    assert trial.value == trial.user_attrs["history"][0]["accuracy"]


def test_an_epochs_work_is_its_documented_formula() -> None:
    """Bugs caught in the formula: the trainable share inverted or subtracted, a head's evaluation
    subtracted. Full fine-tuning costs three backbone passes per training image (forward and two
    backward), a frozen backbone one, a head on cached features none."""
    from tlsearch.train.work import backbone_gflops

    model = tiny_transfer_model(num_outputs=4, seed=0)
    FullFinetune().setup(model)
    forward, head = backbone_gflops(model), 2.0 * sum(p.numel() for p in model.head.parameters()) / 1e9
    full = epoch_work(model, train_images=10, val_images=4, cached=False)
    assert full == pytest.approx(10 * (3 * forward + 3 * head) + 4 * (forward + head), rel=1e-9)
    LinearProbe().setup(model)
    frozen = epoch_work(model, train_images=10, val_images=4, cached=False)
    assert frozen == pytest.approx(10 * (forward + 3 * head) + 4 * (forward + head), rel=1e-9)
    cached = epoch_work(model, train_images=10, val_images=4, cached=True)  # the head on features
    assert cached == pytest.approx(10 * 3 * head + 4 * head, rel=1e-9)


def test_a_backbone_without_a_gflops_fact_costs_two_flops_per_parameter() -> None:
    """Bug caught: the fallback forward cost (2 × params) not given in GFLOP (another divisor)."""
    from tlsearch.train.work import backbone_gflops

    model = tiny_transfer_model(num_outputs=4, seed=0)
    model.info.pop("gflops", None)
    params = sum(p.numel() for p in model.backbone.parameters())
    assert backbone_gflops(model) == pytest.approx(2.0 * params / 1e9, rel=1e-12)
    model.info["gflops"] = 0.25  # the plugin's counted fact wins
    assert backbone_gflops(model) == 0.25


def test_patience_used_up_in_the_last_epoch_is_no_early_stop(data, monkeypatch) -> None:
    """Bug caught: a trial whose patience runs out in its last planned epoch reported as stopped."""
    scripted_accuracy(monkeypatch, [0.9, 0.5, 0.5])
    result = _trainer(epochs=3, patience=2).fit(*data)
    assert len(result.history) == 3 and result.stopped is None and result.best_epoch == 0


def test_patience_counts_from_a_best_first_epoch() -> None:
    """Bug caught: a best epoch 0 never exhausting the patience (the trial would run every epoch)."""
    best = BestEpoch("accuracy", maximize=True, patience=2)
    state = {"w": torch.zeros(1)}
    assert best.offer(0, {"accuracy": 0.9}, lambda: state)
    assert not best.exhausted(1) and best.exhausted(2)


def test_a_patience_of_one_epoch_is_allowed() -> None:
    """Bug caught: the smallest patience (stop after one epoch without improvement) refused."""
    assert BestEpoch("accuracy", maximize=True, patience=1).patience == 1


def test_an_epochs_work_follows_what_trains_not_the_clock(data, monkeypatch) -> None:
    model = tiny_transfer_model(num_outputs=4, seed=0)
    counts = {"train_images": 48, "val_images": 16}
    FullFinetune().setup(model)
    full = epoch_work(model, cached=False, **counts)
    monkeypatch.setattr(time, "perf_counter", lambda: 1e9)  # a machine whose clock says it is slow
    monkeypatch.setattr(time, "time", lambda: 1e9)
    assert epoch_work(model, cached=False, **counts) == full  # the same trial, the same cost
    LinearProbe().setup(model)
    frozen = epoch_work(model, cached=False, **counts)
    probe = epoch_work(model, cached=True, **counts)
    assert probe < frozen < full
    assert full > 0 and probe > 0


def test_a_non_finite_metric_never_becomes_the_best_epoch() -> None:
    """Bug caught: a NaN or infinite score kept as the best (NaN compares false, so it would then
    never be beaten), or the first epoch's taken whatever its value."""
    best = BestEpoch("val_loss", maximize=False)
    state = {"w": torch.zeros(1)}
    assert not best.offer(0, {"val_loss": float("nan")}, lambda: state) and best.epoch == -1
    assert not best.offer(1, {"val_loss": float("-inf")}, lambda: state) and best.value is None
    assert best.offer(2, {"val_loss": 0.5}, lambda: state) and best.epoch == 2
