"""Decision thresholds tuned on validation scores, not a fixed 0.5.

Scores are probabilities in ``[0, 1]`` (a sigmoid of the model's outputs); an item is predicted
positive when its score is **at or above** the threshold.

- :func:`f1_thresholds` — one threshold per label of a multi-label task, each maximising that
  label's F1 on the validation scores. The rule: rank the label's scores from high to low; for each
  cut between two distinct scores, F1 of predicting the items above the cut; take the cut with the
  highest F1 (the highest threshold among ties, so fewer false positives), and place the threshold
  halfway between the lowest score kept and the next lower score (halfway to 0 when every item is
  kept). A label with no positive in validation keeps :data:`DEFAULT_THRESHOLD`.
- :func:`threshold_for_precision` / :func:`threshold_for_recall` — one threshold for a binary
  task: the lowest threshold whose precision reaches the target (so recall is as high as it can be
  at that precision), or the highest threshold whose recall reaches the target. ``None`` when no
  threshold reaches the target.
"""

from __future__ import annotations

import torch

#: the threshold of a label the validation split cannot tune (no positive example)
DEFAULT_THRESHOLD = 0.5


def f1_thresholds(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-label thresholds ``(L,)`` maximising F1 of ``scores`` ``(N, L)`` against 0/1 ``targets``."""
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must both be (N, L) but got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    scores = scores.detach().float()
    targets = targets.detach().float()
    n, labels = scores.shape
    thresholds = torch.full((labels,), DEFAULT_THRESHOLD, dtype=torch.float32, device=scores.device)
    if n == 0:
        return thresholds
    ranked, order = scores.sort(dim=0, descending=True)
    true_positives = targets.gather(0, order).cumsum(dim=0)
    kept = torch.arange(1, n + 1, device=scores.device, dtype=torch.float32)[:, None]
    positives = targets.sum(dim=0)
    f1 = 2 * true_positives / (kept + positives).clamp_min(1)
    lower = torch.cat([ranked[1:], torch.zeros_like(ranked[:1])])
    # a cut is only possible between two distinct scores (and after the last one)
    cut = torch.ones_like(ranked, dtype=torch.bool)
    cut[:-1] = ranked[:-1] > ranked[1:]
    f1 = torch.where(cut, f1, torch.full_like(f1, -1.0))
    best = f1.argmax(dim=0)  # first maximum: the highest threshold among ties
    columns = torch.arange(labels, device=scores.device)
    tuned = (ranked[best, columns] + lower[best, columns]) / 2
    return torch.where(positives > 0, tuned, thresholds)


def _binary_curve(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Distinct cut scores (high to low) with precision and recall of predicting ``>= cut``."""
    scores = scores.detach().float().reshape(-1)
    targets = targets.detach().float().reshape(-1)
    if scores.shape != targets.shape:
        raise ValueError(f"scores and targets differ in length: {scores.numel()} and {targets.numel()}")
    ranked, order = scores.sort(descending=True)
    true_positives = targets[order].cumsum(dim=0)
    kept = torch.arange(1, ranked.numel() + 1, dtype=torch.float32, device=scores.device)
    cut = torch.ones_like(ranked, dtype=torch.bool)
    cut[:-1] = ranked[:-1] > ranked[1:]
    positives = targets.sum().clamp_min(1)
    return ranked[cut], (true_positives / kept)[cut], (true_positives / positives)[cut]


def _check_target(target: float, what: str) -> None:
    if not 0 < target <= 1:
        raise ValueError(f"target {what} must be in (0, 1] but got {target}")


def threshold_for_precision(scores: torch.Tensor, targets: torch.Tensor, *, target: float) -> float | None:
    """The lowest threshold at which precision is at least ``target`` (``None``: none reaches it)."""
    _check_target(target, "precision")
    cuts, precision, _ = _binary_curve(scores, targets)
    reached = (precision >= target).nonzero()
    return None if reached.numel() == 0 else float(cuts[int(reached[-1])])


def threshold_for_recall(scores: torch.Tensor, targets: torch.Tensor, *, target: float) -> float | None:
    """The highest threshold at which recall is at least ``target`` (``None``: none reaches it)."""
    _check_target(target, "recall")
    cuts, _, recall = _binary_curve(scores, targets)
    reached = (recall >= target).nonzero()
    return None if reached.numel() == 0 else float(cuts[int(reached[0])])
