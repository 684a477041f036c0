"""Linear probes solved, not trained: multinomial logistic regression by L-BFGS on cached features.

A linear head on a frozen backbone's cached features is a convex problem. A few epochs of AdamW
stop far from its optimum; a full-batch quasi-Newton solver reaches it in a fraction of the time
(what scikit-learn's ``LogisticRegression`` does, here on the training device). The problem solved:

    minimise  mean cross-entropy(x̂ Wᵀ + b, y)  +  l2 / 2 · ‖W‖²,    x̂ = (x − μ) / σ

on the training features standardised per dimension (μ, σ of the training set), which makes the
problem well conditioned and gives ``l2`` the same meaning for every backbone; the solution is
folded back into the head's raw-feature layer (``W / σ`` and ``b − (W / σ) · μ``), so the head, its
checkpoint and its export are unchanged in form. The bias is not penalised. Label smoothing from
the regularizers applies (it is part of the loss); optimizer weight decay is replaced by ``l2``.

The solver's iterations are spread over the trial's epochs (``PROBE_MAX_ITER / epochs`` each,
continuing the same L-BFGS state), so each epoch reports genuine metrics for pruners and curves;
once the solver has converged the trial ends (``stopped: converged``, the epochs run recorded as
``epochs_run``) instead of repeating the same metrics for its remaining epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

PROBE_MAX_ITER = 500
"""L-BFGS iterations for the whole trial (each evaluates the full-batch loss and gradient)."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def solvable_linear(head: nn.Module) -> nn.Linear | None:
    """The ``nn.Linear`` of a head that is one linear layer (optionally behind dropout), else None.

    Dropout is moot for a solved probe (the L2 strength regularises instead)."""
    layer = head
    if isinstance(head, nn.Sequential) and len(head) > 0:
        if not all(isinstance(m, nn.Dropout) for m in list(head)[:-1]):
            return None
        layer = head[-1]
    return layer if isinstance(layer, nn.Linear) and layer.bias is not None else None


@dataclass
class ProbeStep:
    """One epoch's share of the solve: the training loss (without the L2 term), the gradient's
    largest absolute entry of the full objective, the iterations run so far and convergence."""

    train_loss: float
    grad_max: float
    iterations: int
    converged: bool


class ProbeSolver:
    """Solves ``linear`` on ``features`` → ``targets`` with L2 strength ``l2``, ``epochs`` chunks.

    ``loss`` is the trainer's training loss (cross-entropy with its label smoothing)."""

    def __init__(
        self,
        linear: nn.Linear,
        features: torch.Tensor,
        targets: torch.Tensor,
        *,
        l2: float,
        loss: LossFn,
        epochs: int,
        max_iter: int = PROBE_MAX_ITER,
    ) -> None:
        if not (l2 >= 0 and math.isfinite(l2)):
            raise ValueError(f"probe L2 strength must be a finite number >= 0 but got {l2}")
        self.linear = linear
        self.l2 = float(l2)
        self.loss = loss
        x = features.float()
        self.mean = x.mean(0)
        self.scale = x.std(0, unbiased=False).clamp_min(1e-6)
        self.x = (x - self.mean) / self.scale
        self.y = targets
        out_features, in_features = linear.weight.shape
        device = self.x.device
        self.weight = torch.zeros(out_features, in_features, device=device, requires_grad=True)
        self.bias = torch.zeros(out_features, device=device, requires_grad=True)
        self.optimizer = torch.optim.LBFGS(
            [self.weight, self.bias],
            lr=1.0,
            max_iter=max(1, math.ceil(max_iter / max(epochs, 1))),
            history_size=20,
            tolerance_grad=1e-6,
            tolerance_change=1e-10,
            line_search_fn="strong_wolfe",
        )

    def _objective(self) -> tuple[torch.Tensor, torch.Tensor]:
        data_loss = self.loss(self.x @ self.weight.T + self.bias, self.y)
        return data_loss + 0.5 * self.l2 * self.weight.pow(2).sum(), data_loss

    def step(self) -> ProbeStep:
        """Run this epoch's iterations, write the solution into the head and report."""

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            total, _ = self._objective()
            total.backward()
            return total

        with torch.enable_grad():
            self.optimizer.step(closure)
            self.optimizer.zero_grad(set_to_none=True)
            total, data_loss = self._objective()
            total.backward()
        assert self.weight.grad is not None and self.bias.grad is not None
        grad_max = float(torch.cat([self.weight.grad.flatten(), self.bias.grad.flatten()]).abs().max())
        self.write()
        state = self.optimizer.state[self.optimizer.param_groups[0]["params"][0]]
        iterations = int(state.get("n_iter", 0))
        return ProbeStep(float(data_loss.detach()), grad_max, iterations, grad_max <= 1e-4)

    @torch.no_grad()
    def write(self) -> None:
        """Fold the standardisation into the head's layer: it then takes the raw features."""
        weight = self.weight.detach() / self.scale
        self.linear.weight.copy_(weight.to(self.linear.weight.dtype))
        self.linear.bias.copy_((self.bias.detach() - weight @ self.mean).to(self.linear.bias.dtype))
