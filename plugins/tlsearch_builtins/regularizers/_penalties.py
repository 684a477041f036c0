"""Regularizers that add a loss term: L2-SP, DELTA and BSS (each keeps what it needs from setup)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from tlsearch.kinds import Regularizer, TransferModel
from tlsearch.space import Categorical, Float, Int


class L2SP(Regularizer):
    """L2-SP: pull the pretrained (shared) weights toward their starting point θ0, plain L2 on the new head.

    ``penalty = α/2 · Σ‖w − w0‖²`` over the backbone's trainable parameters (the starting point is
    taken in :meth:`setup`, so it is what the backbone plugin loaded) ``+ β/2 · Σ‖w‖²`` over the
    head's weight matrices. Parameters frozen at a step are skipped (they cannot move). L2-SP
    replaces plain weight decay on the backbone: with ``weight_decay`` also on, it decays the head only.
    Source: Li, Grandvalet & Davoine, *Explicit Inductive Bias for Transfer Learning with
    Convolutional Networks*, ICML 2018 (α = 0.1, β = 0.01 in the paper); searched by Quick-Tune.
    """

    name = "l2_sp"
    hyperparameters = {
        "alpha": Float(1e-4, 1e-1, log=True, default=1e-2, help="strength toward θ0 on the backbone"),
        "beta": Float(1e-4, 1e-1, log=True, default=1e-3, help="plain L2 strength on the head"),
    }
    alpha: float
    beta: float

    def setup(self, model: TransferModel, *, num_outputs: int, task: str) -> None:
        self._start = {name: p.detach().clone() for name, p in model.backbone.named_parameters()}

    def replaces_weight_decay(self, model: TransferModel) -> list[nn.Parameter]:
        """The backbone's parameters: L2-SP pulls them toward θ0 instead, so with the
        ``weight_decay`` regularizer also on, plain decay applies to the head only (as in the paper)."""
        return list(model.backbone.parameters())

    def penalty(
        self, model: TransferModel, *, images: torch.Tensor | None, features: torch.Tensor
    ) -> torch.Tensor | None:
        terms: list[torch.Tensor] = []
        for name, p in model.backbone.named_parameters():
            if p.requires_grad:
                terms.append((p - self._start[name].to(p.device)).pow(2).sum())
        total = features.new_zeros(()) if not terms else 0.5 * self.alpha * torch.stack(terms).sum()
        head = [p.pow(2).sum() for p in model.head.parameters() if p.requires_grad and p.ndim >= 2]
        if head:
            total = total + 0.5 * self.beta * torch.stack(head).sum()
        return total

    def teardown(self, model: TransferModel) -> None:
        self._start = {}


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    prefix: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        prefix.append(level[0])
    return ".".join(prefix)


def layer_group_modules(model: TransferModel) -> list[str]:
    """Names of the backbone modules whose outputs are the feature maps of each layer group: the
    deepest module that holds all of a group's parameters (``layer3``, ``blocks.5``). Groups spread
    over the backbone's root (a stem of loose modules) are skipped."""
    out = []
    for group in model.layer_group_names:
        prefix = _common_prefix(group)
        if prefix and prefix not in out:
            out.append(prefix)
    return out


class DELTA(Regularizer):
    """DELTA: keep the feature maps close to those of the frozen starting model on the same images.

    ``penalty = strength · Σ_layers mean((FM − FM0)²)``, where FM are the outputs of the backbone's
    layer groups (``layers: groups``, captured with forward hooks; e.g. a ResNet's ``layer1…layer4``)
    or only the pooled features (``layers: pooled``), and FM0 those of a frozen copy of the model
    taken in :meth:`setup`. The mean (not the paper's sum) keeps the strength independent of input
    size. Channels are weighted uniformly: the paper's supervised channel attention is not
    implemented. The copy's BatchNorm layers follow the live model's train/eval mode (its dropout
    and drop-path are off), so the penalty is exactly zero while the weights are unchanged and no
    dropout is active. Source: Li et al., *DELTA: DEep Learning Transfer using Feature Map with
    Attention*, ICLR 2019; searched by Quick-Tune.
    """

    name = "delta"
    uses_inputs = True
    hyperparameters = {
        "strength": Float(1e-4, 1e-1, log=True, default=1e-2),
        "layers": Categorical(("groups", "pooled"), default="groups", help="which feature maps to compare"),
    }
    strength: float
    layers: str

    def setup(self, model: TransferModel, *, num_outputs: int, task: str) -> None:
        if self.layers not in ("groups", "pooled"):
            raise ValueError(f"delta: layers {self.layers!r} is not valid; valid choices: groups, pooled")
        self._reference = copy.deepcopy(model.backbone).eval().requires_grad_(False)
        self._live_maps: dict[str, torch.Tensor] = {}
        self._ref_maps: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        if self.layers == "groups":
            for name in layer_group_modules(model):
                self._handles.append(
                    model.backbone.get_submodule(name).register_forward_hook(
                        self._keep(self._live_maps, name)
                    )
                )
                self._handles.append(
                    self._reference.get_submodule(name).register_forward_hook(
                        self._keep(self._ref_maps, name)
                    )
                )

    @staticmethod
    def _keep(store: dict[str, torch.Tensor], name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                store[name] = output

        return hook

    def _mirror_modes(self, model: TransferModel) -> None:
        for live, ref in zip(model.backbone.modules(), self._reference.modules(), strict=True):
            if isinstance(live, nn.modules.batchnorm._BatchNorm):
                ref.train(live.training)

    def penalty(
        self, model: TransferModel, *, images: torch.Tensor | None, features: torch.Tensor
    ) -> torch.Tensor | None:
        if images is None:
            raise ValueError("delta needs the images of each step (uses_inputs is True)")
        self._reference.to(images.device)
        self._mirror_modes(model)
        with torch.no_grad():
            reference_features = self._reference(images)
        if self.layers == "pooled":
            return self.strength * (features - reference_features).pow(2).mean()
        terms = [
            (self._live_maps[name] - self._ref_maps[name]).pow(2).mean()
            for name in self._ref_maps
            if name in self._live_maps and self._live_maps[name].shape == self._ref_maps[name].shape
        ]
        terms.append((features - reference_features).pow(2).mean())
        return self.strength * torch.stack(terms).sum()

    def teardown(self, model: TransferModel) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._live_maps.clear()
        self._ref_maps.clear()
        self._reference = None  # type: ignore[assignment]


class BSS(Regularizer):
    """BSS (Batch Spectral Shrinkage): penalise the k smallest singular values of the batch's feature matrix.

    ``penalty = η · Σ_{i=1..k} σ_{-i}²`` of the ``(N, D)`` pooled features: small singular directions
    carry the pretrained knowledge that does not transfer, and shrinking them prevents negative
    transfer. Source: Chen et al., *Catastrophic Forgetting Meets Negative Transfer: Batch Spectral
    Shrinkage for Safe Transfer Learning*, NeurIPS 2019 (η = 0.001, k = 1 in the paper); searched by
    Quick-Tune. Needs only the features, so it works with cached features (then it is a constant).
    """

    name = "bss"
    hyperparameters = {
        "strength": Float(1e-4, 1e-1, log=True, default=1e-3, help="η"),
        "k": Int(1, 4, default=1, help="how many of the smallest singular values"),
    }
    strength: float
    k: int

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.k < 1:
            raise ValueError(f"bss: k must be >= 1 but got {self.k}")

    def penalty(
        self, model: TransferModel, *, images: torch.Tensor | None, features: torch.Tensor
    ) -> torch.Tensor | None:
        singular = torch.linalg.svdvals(features.float().flatten(1))  # descending
        k = min(self.k, singular.numel())
        return self.strength * singular[-k:].pow(2).sum()
