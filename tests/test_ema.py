"""EMA of weights (``training.ema``): the copy really is the moving average of the trained weights,
frozen parameters stay their pretrained values in it, the better of the two scores each epoch, and
the checkpoint and export hold the EMA copy when it wins (and say so)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from tlsearch.data import DecodedImages
from tlsearch.registry import get_plugin_manager
from tlsearch.search import run_study
from tlsearch.search.best import export_study
from tlsearch.search.checkpoint import load_checkpoint
from tlsearch.search.study_dir import StudyDir
from tlsearch.testing import TrainEverything, decoded_images, synthetic_images, tiny_transfer_model
from tlsearch.train import Trainer, TrainSettings
from tlsearch.train.ema import WeightAverage


def _data(n: int = 16) -> tuple[Any, DecodedImages]:
    images, labels = synthetic_images(n, size=32, num_classes=3)
    model = tiny_transfer_model(num_outputs=3)
    return model, decoded_images(images, labels, model.data_config)


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_the_ema_copy_is_the_moving_average_of_the_weights_after_each_step() -> None:
    """One step per epoch; the raw weights after each step give the expected average
    ``e₁ = θ₁, e_k = d_k·e_{k−1} + (1 − d_k)·θ_k`` with the warmed-up decay
    ``d_k = min(decay, 1 − k^−3/4)``. Bugs caught: the decay and 1 − decay swapped; no warm-up
    (the copy stuck near the untrained start); the update skipped or run twice per step."""
    model, data = _data(16)
    decay = 0.6
    settings = TrainSettings(epochs=5, batch_size=16, lr=0.05, augment=False, ema=decay, warmup=0.0)
    trainer = Trainer(model, strategy=TrainEverything(), num_outputs=3, settings=settings)
    raw: list[dict[str, torch.Tensor]] = []
    averaged: list[dict[str, torch.Tensor]] = []

    def record(epoch: int, metrics: dict[str, float]) -> None:
        assert trainer.ema is not None
        expected = trainer.ema.module if metrics["ema_used"] else model
        assert trainer.scored_module(metrics) is expected  # what a best-epoch snapshot keeps
        raw.append(_params(model))
        averaged.append(_params(trainer.ema.module))

    trainer.fit(data, data, on_epoch_end=record)
    expected = dict(raw[0])
    for k in range(2, 6):
        d = min(decay, 1 - k ** (-3 / 4))
        expected = {name: d * expected[name] + (1 - d) * raw[k - 1][name] for name in expected}
        for name, value in expected.items():
            torch.testing.assert_close(averaged[k - 1][name], value, rtol=1e-5, atol=1e-6)
    name = next(iter(expected))
    assert not torch.allclose(averaged[-1][name], raw[-1][name])  # an average, not the last weights


def test_a_frozen_parameter_stays_its_pretrained_value_in_the_ema_copy() -> None:
    """Bugs caught: the copy made after the first step or from other weights; frozen parameters
    averaged towards something else; the copy left trainable (an optimizer could pick it up)."""
    model, data = _data(16)
    strategy = get_plugin_manager().registry.get("freezing", "freeze_stages").cls(n_frozen=1)
    start = _params(model)
    settings = TrainSettings(epochs=2, batch_size=8, lr=0.05, augment=False, ema=0.9)
    trainer = Trainer(model, strategy=strategy, num_outputs=3, settings=settings)
    copies: list[WeightAverage] = []
    trainer.fit(data, data, on_epoch_end=lambda e, m: copies.append(trainer.ema))  # type: ignore[arg-type]
    ema = copies[-1].module
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert frozen and trained
    after = _params(ema)
    for name in frozen:
        assert torch.equal(after[name], start[name]), name
    assert any(not torch.equal(after[n], start[n]) for n in trained)
    assert not any(p.requires_grad for p in ema.parameters())


@pytest.mark.parametrize(
    ("metric", "raw", "averaged", "used"),
    [
        ("accuracy", 0.5, 0.75, True),
        ("accuracy", 0.75, 0.5, False),
        ("val_loss", 0.5, 0.75, False),  # minimised: lower wins
        ("val_loss", 0.75, 0.5, True),
    ],
)
def test_the_better_copy_scores_the_epoch(metric: str, raw: float, averaged: float, used: bool) -> None:
    """Bugs caught: the comparison's direction wrong for a minimised metric; the raw weights always kept."""
    model, _ = _data()
    settings = TrainSettings(ema=0.9, metric=metric)
    trainer = Trainer(model, strategy=TrainEverything(), num_outputs=3, settings=settings)
    other = "val_loss" if metric == "accuracy" else "accuracy"
    out = trainer._with_ema({metric: raw, other: 1.0}, {metric: averaged, other: 2.0})
    assert out["ema_used"] == float(used)
    assert out[metric] == (averaged if used else raw) and out[other] == (2.0 if used else 1.0)
    assert (out[f"raw_{metric}"], out[f"ema_{metric}"]) == (raw, averaged)


def _ema_wins(monkeypatch: pytest.MonkeyPatch, captured: list[dict[str, torch.Tensor]]) -> None:
    """Make the EMA copy score higher (the comparison is tested above) and capture the EMA copy's
    weights each time an epoch's weights are kept (the best epoch's, :mod:`tlsearch.train.best`)."""
    evaluate = Trainer._evaluate

    def scored(self: Trainer, source: Any, *, cached: bool, model: Any = None) -> dict[str, float]:
        metrics = evaluate(self, source, cached=cached, model=model)
        return {**metrics, "accuracy": 0.9 if model is not None else 0.1}

    evaluated_state = Trainer.evaluated_state

    def capture(self: Trainer, model: Any, *, cached: bool, metrics: Any = None) -> Any:
        assert self.ema is not None
        captured.append({k: v.detach().clone() for k, v in self.ema.module.state_dict().items()})
        return evaluated_state(self, model, cached=cached, metrics=metrics)

    monkeypatch.setattr(Trainer, "_evaluate", scored)
    monkeypatch.setattr(Trainer, "evaluated_state", capture)


def test_when_the_ema_copy_wins_the_trained_model_holds_its_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: list[dict[str, torch.Tensor]] = []
    _ema_wins(monkeypatch, captured)
    model, data = _data(16)
    settings = TrainSettings(epochs=2, batch_size=8, lr=0.05, augment=False, ema=0.9)
    result = Trainer(model, strategy=TrainEverything(), num_outputs=3, settings=settings).fit(data, data)
    assert result.extras["ema"]["used"] is True and result.metrics["ema_used"] == 1.0
    weights = captured[-1]  # the kept epoch's EMA copy
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_the_ema_record_is_the_kept_epochs_not_the_last_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug caught: ``extras["ema"]`` (which copy won, both scores) read from the last epoch when an
    earlier one is kept: the trial would report the raw weights while it holds the EMA copy."""
    scores = iter([0.5, 0.9, 0.6, 0.4])  # epoch 0: raw 0.5, EMA 0.9 (kept); epoch 1: raw 0.6, EMA 0.4
    evaluate = Trainer._evaluate

    def scripted(self: Trainer, source: Any, *, cached: bool, model: Any = None) -> dict[str, float]:
        return {**evaluate(self, source, cached=cached, model=model), "accuracy": next(scores)}

    monkeypatch.setattr(Trainer, "_evaluate", scripted)
    model, data = _data(16)
    settings = TrainSettings(epochs=2, batch_size=8, lr=0.05, augment=False, ema=0.9)
    result = Trainer(model, strategy=TrainEverything(), num_outputs=3, settings=settings).fit(data, data)
    assert result.best_epoch == 0 and result.history[1]["ema_used"] == 0.0
    ema = result.extras["ema"]
    assert (ema["used"], ema["raw_accuracy"], ema["ema_accuracy"]) == (True, 0.5, 0.9)


def test_without_ema_nothing_changes() -> None:
    """Bug caught: EMA on by default (an extra evaluation per epoch and a copy of the model)."""
    model, data = _data(16)
    result = Trainer(
        model, strategy=TrainEverything(), num_outputs=3, settings=TrainSettings(epochs=1, batch_size=8)
    ).fit(data, data)
    assert "ema" not in result.extras and "ema_used" not in result.metrics


def test_a_solved_probe_has_no_ema() -> None:
    """A head solved by L-BFGS has no steps to average: the EMA is skipped and says why."""
    model, data = _data(16)
    strategy = get_plugin_manager().registry.get("freezing", "linear_probe").cls()
    settings = TrainSettings(epochs=1, batch_size=8, ema=0.9)
    trainer = Trainer(model, strategy=strategy, num_outputs=3, settings=settings)
    if not trainer.solves_probe():
        pytest.skip("this linear probe is not solved")
    result = trainer.fit(data, data)
    assert result.extras["ema"]["used"] is False and "solved" in result.extras["ema"]["skipped"]


@pytest.mark.slow
def test_export_uses_the_ema_copy_when_it_wins(write_study, tmp_path: Path, monkeypatch) -> None:
    """Bugs caught: the checkpoint (which export rebuilds the model from) holding the last step's
    weights while the EMA scored the trial; the export not recording which weights it holds."""
    captured: list[dict[str, torch.Tensor]] = []
    _ema_wins(monkeypatch, captured)
    study = write_study(
        space={"freezing": ["full_finetune"], "regularizers": {}},
        training={"ema": 0.9, "epochs": 1},
        search={"n_trials": 1},
    )
    out = tmp_path / "out"
    (trial,) = run_study(study, out_dir=out, progress=False).study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["ema"]["used"] is True
    model, _ = load_checkpoint(StudyDir(out).trial_dir(trial.number), get_plugin_manager().registry)
    (weights,) = captured
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    export_study(out)
    assert json.loads((out / "model.json").read_text())["metadata"]["weights"] == "ema"


def test_copy_to_puts_the_averaged_parameters_and_buffers_into_the_model() -> None:
    """Bugs caught: the parameters or the BatchNorm statistics (buffers) not copied, so the
    checkpoint and export would hold the raw weights when the EMA copy won."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = WeightAverage(model, decay=0.5)
    with torch.no_grad():  # the averaged copy and the model now differ in every tensor
        for tensor in [*ema.module.parameters(), *ema.module.buffers()]:
            tensor.add_(1)  # num_batches_tracked is an integer
    ema.copy_to(model)
    averaged = ema.module.state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, averaged[name], rtol=0, atol=0, msg=name)
    assert model.state_dict()["1.running_var"].eq(2.0).all()  # 1 (BatchNorm's start) + 1: a copy


def test_the_batchnorm_statistics_are_averaged_and_its_counter_copied() -> None:
    """Bug caught: the running statistics left out of the average (the copy would evaluate with
    its start's statistics, or the averaged tensors pair with the wrong model tensors)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    ema.apply_update_(model, 0.5)
    torch.testing.assert_close(ema.module[1].running_mean, torch.full((4,), 1.0))  # 0.5·0 + 0.5·2
    assert int(ema.module[1].num_batches_tracked) == 7
