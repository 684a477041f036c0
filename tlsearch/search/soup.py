"""Greedy model soup (Wortsman et al. 2022, "Model soups"): after the search, average the weights
of the top trials that share a backbone and its pretrained start, adding an ingredient only when
the validation score of the average improves; export the soup when it beats the best single trial.

A soup has the architecture of its ingredients, so it costs nothing at inference. Only models whose
parameters can be averaged are mixed: the same backbone plugin with the same hyperparameters (so
the same pretrained weights, or the same seeded random start), the same preprocessing, and a
state dict with the same names and shapes (the same head architecture and width). Trials that
differ are left out, each with the reason, which the metadata and the report carry.

BatchNorm: the running mean and variance are averaged like the weights (the mean of the
ingredients' statistics, not recomputed on training data; the greedy validation check guards a
soup whose averaged statistics do not fit). Integer buffers (``num_batches_tracked``) keep the
first ingredient's value.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tlsearch.data import DecodedImages
from tlsearch.preprocessing import DataConfig, normalize
from tlsearch.search.checkpoint import TrialRecord
from tlsearch.train.metrics import evaluate_outputs
from tlsearch.train.targets import TargetScale

__all__ = ["Ingredient", "Soup", "average_weights", "greedy_soup", "mix_problem", "validation_metrics"]


@dataclass
class Ingredient:
    """A trial the soup may use: its number, its recorded validation score, model and record."""

    trial: int
    value: float
    model: nn.Module
    record: TrialRecord


@dataclass
class Soup:
    """What :func:`greedy_soup` made. ``model`` is the soup when it beats the best single trial
    (None otherwise); ``ingredients`` the trial numbers averaged, in the order added (the first is
    the best trial); ``value``/``metrics`` the soup's validation score, ``single_value`` the best
    trial's, measured the same way; ``tried`` each candidate with the score of the soup with it and
    whether it was kept; ``left_out`` the trials that could not be mixed and why; ``reason`` one
    line on the outcome."""

    ingredients: list[int]
    value: float
    metrics: dict[str, float]
    single_value: float
    reason: str
    tried: list[dict[str, Any]] = field(default_factory=list)
    left_out: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None

    @property
    def exported(self) -> bool:
        return self.model is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "exported": self.exported,
            "ingredients": self.ingredients,
            "value": self.value,
            "single_value": self.single_value,
            "reason": self.reason,
            "tried": self.tried,
            "left_out": self.left_out,
        }


def average_weights(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform mean of state dicts with the same names and shapes: every floating tensor
    (weights, biases, BatchNorm running statistics) averaged in float64 and cast back; integer
    buffers taken from the first."""
    if not states:
        raise ValueError("average_weights needs at least one state dict")
    first = states[0]
    out: dict[str, torch.Tensor] = {}
    for name, tensor in first.items():
        if tensor.is_floating_point():
            total = torch.zeros(tensor.shape, dtype=torch.float64)
            for state in states:
                total += state[name].detach().to("cpu", torch.float64)
            out[name] = (total / len(states)).to(tensor.dtype)
        else:
            out[name] = tensor.detach().clone()
    return out


def start_of(choices: Mapping[str, Any]) -> dict[str, Any]:
    """The choices that decide a trial's starting backbone: its plugin and every backbone
    hyperparameter (model, weights, …)."""
    name = choices.get("backbone")
    return {k: v for k, v in choices.items() if k == "backbone" or k.startswith(f"backbone.{name}.")}


def mix_problem(base: Ingredient, other: Ingredient) -> str | None:
    """Why ``other`` cannot be averaged with ``base`` (None when it can)."""
    a, b = start_of(base.record.choices), start_of(other.record.choices)
    if a != b:
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return (
            f"another backbone start ({', '.join(f'{k}={b.get(k)!r}' for k in differ[:3])}; "
            f"trial {base.trial} has {', '.join(f'{k}={a.get(k)!r}' for k in differ[:3])})"
        )
    if DataConfig.from_dict(base.record.data_config) != DataConfig.from_dict(other.record.data_config):
        return "another preprocessing (input size, mean/std or crop)"
    sa, sb = base.model.state_dict(), other.model.state_dict()
    if sa.keys() != sb.keys():
        extra = sorted(set(sa) ^ set(sb))
        return f"another architecture (parameter {extra[0]!r} is in one model only)"
    for name, tensor in sa.items():
        if tensor.shape != sb[name].shape:
            return f"another shape of {name!r} ({tuple(sb[name].shape)} against {tuple(tensor.shape)})"
    return None


def greedy_soup(
    candidates: Sequence[Ingredient],
    *,
    evaluate: Callable[[nn.Module], dict[str, float]],
    metric: str,
    maximize: bool,
) -> Soup:
    """The greedy soup of ``candidates``, the first being the best trial and the rest in order of
    validation score: each mixable candidate joins when the average with it scores strictly better
    on ``metric`` (``evaluate(model)`` gives the validation metrics) than the soup without it."""
    base, rest = candidates[0], candidates[1:]
    left_out: list[dict[str, Any]] = []
    mixable: list[Ingredient] = []
    for candidate in rest:
        problem = mix_problem(base, candidate)
        if problem is None:
            mixable.append(candidate)
        else:
            left_out.append({"trial": candidate.trial, "reason": problem})
    best_metrics = evaluate(base.model)
    single = best = float(best_metrics[metric])
    states = [base.model.state_dict()]
    kept = [base.trial]
    tried: list[dict[str, Any]] = []
    work = copy.deepcopy(base.model).eval()
    for candidate in mixable:
        trial_states = [*states, candidate.model.state_dict()]
        work.load_state_dict(average_weights(trial_states))
        metrics = evaluate(work)
        value = float(metrics[metric])
        improves = value > best if maximize else value < best
        tried.append({"trial": candidate.trial, "value": value, "kept": improves})
        if improves:
            states, best, best_metrics = trial_states, value, metrics
            kept.append(candidate.trial)
    if len(kept) == 1:
        why = (
            "no other top trial shares the best trial's backbone start"
            if not mixable
            else f"no ingredient improved {metric} over the best trial's {single:.4g}"
        )
        return Soup([base.trial], single, best_metrics, single, why, tried, left_out)
    work.load_state_dict(average_weights(states))
    reason = f"the soup of trials {kept} scores {metric} {best:.4g} against the best trial's {single:.4g}"
    return Soup(kept, best, best_metrics, single, reason, tried, left_out, model=work.eval())


@torch.inference_mode()
def validation_metrics(
    model: nn.Module,
    images: DecodedImages,
    *,
    config: DataConfig,
    task: str,
    scale: TargetScale | None = None,
    device: torch.device | None = None,
    batch_size: int = 64,
    loss: str = "auto",
) -> dict[str, float]:
    """``model``'s metrics on decoded validation ``images`` (in fp32, in the targets' own units):
    every metric a study can optimise (``tlsearch.config.METRICS``), so that a soup is judged on
    the study's own one. ``val_loss`` is the trainer's (:meth:`tlsearch.train.Trainer.loss` with
    ``train=False``): cross-entropy, binary cross-entropy (multilabel), or the study's regression
    ``loss`` on the standardised scale."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(normalize(images.images[start : start + batch_size], config)).to(device)
        outputs.append(model(x).float().cpu())
    out = torch.cat(outputs)
    targets = torch.from_numpy(np.asarray(images.targets))
    model.cpu()
    if task == "classification":
        metrics = evaluate_outputs(out, targets, task=task)
        metrics["val_loss"] = float(torch.nn.functional.cross_entropy(out, targets.long().view(-1)))
        return metrics
    if task == "multilabel":  # val_loss: the trainer's mean binary cross-entropy over the labels
        metrics = evaluate_outputs(out, targets, task=task)
        vectors = targets.float().view_as(out)
        metrics["val_loss"] = float(torch.nn.functional.binary_cross_entropy_with_logits(out, vectors))
        return metrics
    trained = targets.float().view_as(out)  # the scale the model was trained on
    if scale is not None:
        trained = torch.from_numpy(scale.standardise(targets.numpy())).view_as(out)
    regression_loss = torch.nn.functional.huber_loss if loss == "huber" else torch.nn.functional.mse_loss
    metrics = evaluate_outputs(scale.restore(out) if scale is not None else out, targets, task=task)
    metrics["val_loss"] = float(regression_loss(out, trained))
    return metrics
