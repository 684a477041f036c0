"""Linear probes solved, not trained: on cached features a ``linear`` head under ``linear_probe`` is
solved by L-BFGS to the optimum of its L2-regularised logistic regression, reports per-epoch
metrics like any trial, and its weights land in the model (a fresh model loading the state dict
reproduces the validation accuracy)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tlsearch_builtins.freezing._static import LinearProbe
from torch import nn

from tlsearch.testing._loop import decoded_images
from tlsearch.testing._tiny import TinyBackbone, synthetic_images, tiny_transfer_model
from tlsearch.train import Trainer, TrainSettings
from tlsearch.train.probe import solvable_linear

L2 = 1e-3


def _data():
    images, labels = synthetic_images(96, size=24, num_classes=3, seed=1)
    config = TinyBackbone().build().data_config
    return (
        decoded_images(images[:64], labels[:64], config),
        decoded_images(images[64:], labels[64:], config),
    )


def _fit(*, solve: bool, epochs: int = 2):
    train, val = _data()
    model = tiny_transfer_model(num_outputs=3, seed=0)
    settings = TrainSettings(epochs=epochs, batch_size=16, lr=1e-2, precision="fp32", solve_probe=solve)
    trainer = Trainer(model, strategy=LinearProbe(l2=L2), num_outputs=3, settings=settings)
    return trainer, model, trainer.fit(train, val), train, val


def _objective(trainer: Trainer, model, train) -> tuple[float, float]:
    """The probe's objective at the head's weights (standardised features, L2 on the standardised
    weights: the solver's problem) and the largest entry of its gradient."""
    x = trainer.features(torch.from_numpy(train.images).permute(0, 3, 1, 2)).float()
    y = torch.from_numpy(train.targets)
    mean, scale = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    linear = solvable_linear(model.head)
    assert linear is not None
    weight = (linear.weight.detach() * scale).requires_grad_()
    bias = (linear.bias.detach() + linear.weight.detach() @ mean).requires_grad_()
    loss = F.cross_entropy(((x - mean) / scale) @ weight.T + bias, y) + 0.5 * L2 * weight.pow(2).sum()
    loss.backward()
    assert weight.grad is not None and bias.grad is not None
    grad = torch.cat([weight.grad.flatten(), bias.grad.flatten()])
    return float(loss), float(grad.abs().max())


def test_solved_probe_reaches_the_optimum_the_epoch_probe_does_not() -> None:
    solved, solved_model, solved_fit, train, _ = _fit(solve=True)
    epoch, epoch_model, epoch_fit, _, _ = _fit(solve=False)
    assert solved.solves_probe() and not epoch.solves_probe()
    assert solved_fit.used_feature_cache
    assert len(epoch_fit.history) == 2 and epoch_fit.stopped is None
    solved_loss, solved_grad = _objective(solved, solved_model, train)
    epoch_loss, _ = _objective(epoch, epoch_model, train)
    assert solved_grad < 1e-3, solved_fit.extras["probe_solver"]
    assert solved_loss <= epoch_loss
    assert solved_fit.extras["probe_solver"]["converged"]
    assert solved_fit.metrics["accuracy"] >= epoch_fit.metrics["accuracy"]


def test_solved_head_is_in_the_model_and_its_checkpoint() -> None:
    trainer, model, fit, _, val = _fit(solve=True, epochs=1)
    fresh = tiny_transfer_model(num_outputs=3, seed=5)
    fresh.load_state_dict(model.state_dict())
    replay = Trainer(
        fresh, strategy=LinearProbe(), num_outputs=3, settings=TrainSettings(precision="fp32")
    ).evaluate(torch.from_numpy(val.images).permute(0, 3, 1, 2), torch.from_numpy(val.targets))
    assert replay["accuracy"] == fit.metrics["accuracy"]
    assert abs(replay["val_loss"] - fit.metrics["val_loss"]) < 1e-5


def test_a_linear_layer_alone_in_a_sequential_is_solved() -> None:
    """Bug caught: ``nn.Sequential(nn.Linear(...))`` (a head plugin's usual wrapping) not solved."""
    head = nn.Sequential(nn.Linear(4, 2))
    assert solvable_linear(head) is head[0]


def test_heads_that_are_not_one_linear_layer_train_by_epochs() -> None:
    assert solvable_linear(nn.Sequential(nn.Dropout(0.2), nn.Linear(4, 2))) is not None
    assert solvable_linear(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))) is None
    assert solvable_linear(nn.Linear(4, 2, bias=False)) is None


def test_a_converged_probe_ends_the_trial_instead_of_repeating_its_epochs() -> None:
    """The solver spreads its iterations over the epochs; once it has converged the later epochs
    would report the same metrics, so the trial ends there (``stopped: converged``), with a
    per-epoch history up to that point for pruners and curves."""
    trainer, _, fit, _, _ = _fit(solve=True, epochs=10)
    assert fit.extras["probe_solver"]["converged"]
    assert fit.stopped == "converged"
    assert 1 <= len(fit.history) < 10
    assert fit.extras["stopped"] == {"reason": "converged", "after_epoch": len(fit.history) - 1}
    assert fit.best_epoch <= len(fit.history) - 1


def test_converging_in_the_last_epoch_is_no_early_stop() -> None:
    """``stopped: converged`` says epochs were left unrun. Bugs caught: a one-epoch trial that
    converged reported as stopped early; one converged with exactly one epoch left not reported."""
    for epochs, stopped in ((1, None), (2, "converged")):
        _, _, fit, _, _ = _fit(solve=True, epochs=epochs)
        assert fit.extras["probe_solver"]["converged"] and len(fit.history) == 1
        assert fit.stopped == stopped, epochs


def test_an_unconverged_probe_runs_every_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Far from convergence (one L-BFGS iteration per epoch) every epoch still runs."""
    from tlsearch.train.probe import ProbeSolver

    monkeypatch.setitem(ProbeSolver.__init__.__kwdefaults__, "max_iter", 3)
    _, _, fit, _, _ = _fit(solve=True, epochs=3)
    assert not fit.extras["probe_solver"]["converged"]
    assert fit.stopped is None and len(fit.history) == 3
