"""Regularizers that add a loss term: L2-SP, DELTA and BSS (each keeps what it needs from setup)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
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
    needs_trainable_backbone = True  # a frozen backbone stays at θ0; the head's L2 is weight_decay's job
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


ATTENTION_IMAGES = 32  # training images the channel attention is measured on (once per trial)
REMOVAL_BATCH = 128  # images per forward pass while measuring the loss without each channel
POOLED = "pooled features"  # the name of the pooled features' entry in the attention weights


def channel_dim(feature_map: torch.Tensor) -> int:
    """The channel axis of a feature map: 1 for ``(N, C)`` and ``(N, C, H, W)`` (timm's CNNs), the
    last for a transformer's ``(N, tokens, C)``."""
    return 2 if feature_map.ndim == 3 else 1


def channel_means(values: torch.Tensor) -> torch.Tensor:
    """``(C,)``: the mean of ``values`` over every axis except the channel axis."""
    dim = channel_dim(values)
    return values.transpose(0, dim).flatten(1).mean(dim=1)


class DELTA(Regularizer):
    """DELTA: keep the feature maps close to the starting model's, channel by channel, weighted by how
    much each channel matters to the target task (the paper's supervised channel attention).

    ``penalty = strength · Σ_layers Σ_c w_c · mean((FM_c − FM0_c)²)``, where FM are the outputs of
    the backbone's layer groups plus its pooled features (``layers: groups``, captured with forward
    hooks; e.g. a ResNet's ``layer1…layer4``) or only the pooled features (``layers: pooled``), FM0
    those of a frozen copy of the starting model taken in :meth:`setup`, and ``mean`` is over the
    batch and the spatial (or token) positions.

    The attention weights ``w`` are computed once, in :meth:`calibrate`, from the starting model, as
    in the paper: ``w = softmax_c(L(without channel c) − L)``, the increase of the target-task loss
    when channel ``c`` of that feature map is zeroed, over ``ATTENTION_IMAGES`` training images. The
    loss needs a classifier (or regressor) on the starting features for the target task; the paper
    trains one, here it is an L2-regularised logistic (or ridge) fit on the starting model's pooled
    features of the same images: the trial's own head is still untrained at that point. Uniform
    weights ``1/C`` are the paper's feature-map L2 ablation; the mean over positions (not the paper's
    sum) keeps the strength independent of input size, and with uniform weights the penalty equals
    ``mean((FM − FM0)²)``. Measuring costs one forward pass of those images per regularized channel
    (batched ``REMOVAL_BATCH`` images at a time), once per trial.

    The copy's BatchNorm layers follow the live model's train/eval mode (its dropout and drop-path
    are off), so the penalty is exactly zero while the weights are unchanged and no dropout is
    active. Used without :meth:`calibrate` (outside tlsearch's trainer) it warns and falls back to
    uniform weights. Source: Li et al., *DELTA: DEep Learning Transfer using Feature Map with
    Attention*, ICLR 2019; searched by Quick-Tune.
    """

    name = "delta"
    uses_inputs = True
    needs_trainable_backbone = True  # a frozen backbone's feature maps are the starting model's
    calibration_images = ATTENTION_IMAGES
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
        self.attention: dict[str, torch.Tensor] = {}
        self._warned = False
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

    # --- the attention weights, once, from the starting model -----------------------------------

    def calibrate(
        self,
        model: TransferModel,
        *,
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        num_outputs: int,
        task: str,
    ) -> None:
        """Measure the channel attention of every regularized feature map (see the class doc)."""
        images = torch.cat([x for x, _ in batches]).float()
        targets = torch.cat([y for _, y in batches])
        self._reference.to(images.device).eval()
        with torch.no_grad():
            pooled = self._reference(images).float()
            maps = {name: m.shape[channel_dim(m)] for name, m in self._ref_maps.items()}
        self._ref_maps.clear()
        probe = fit_probe(pooled, targets, num_outputs=num_outputs, task=task)
        with torch.no_grad():
            base = float(_task_loss(probe(pooled), targets, task=task).mean())
            self.attention = {
                name: self._map_attention(name, c, images, targets, probe, base, task)
                for name, c in maps.items()
            }
            self.attention[POOLED] = torch.softmax(
                _pooled_removal_losses(pooled, targets, probe, task) - base, 0
            )
        self._ref_maps.clear()

    def _map_attention(
        self,
        name: str,
        channels: int,
        images: torch.Tensor,
        targets: torch.Tensor,
        probe: nn.Linear,
        base: float,
        task: str,
    ) -> torch.Tensor:
        """softmax over the channels of ``name``'s map of the loss increase when each is zeroed."""
        n = len(images)
        per_pass = max(1, REMOVAL_BATCH // n)  # channels removed side by side in one forward pass
        losses = []
        module = self._reference.get_submodule(name)
        for first in range(0, channels, per_pass):
            removed = torch.arange(first, min(first + per_pass, channels), device=images.device)
            keep = torch.ones(len(removed), channels, device=images.device)
            keep[torch.arange(len(removed)), removed] = 0.0
            keep = keep.repeat_interleave(n, dim=0)  # (len(removed)·n, C): one copy of the images per channel

            def zero_channel(
                module: nn.Module, args: Any, output: torch.Tensor, keep: torch.Tensor = keep
            ) -> torch.Tensor:
                shape = [1] * output.ndim
                shape[0], shape[channel_dim(output)] = keep.shape
                return output * keep.view(shape).to(output.dtype)

            handle = module.register_forward_hook(zero_channel)
            try:
                outputs = probe(
                    self._reference(images.repeat(len(removed), *([1] * (images.ndim - 1)))).float()
                )
            finally:
                handle.remove()
            loss = _task_loss(outputs, targets.repeat(len(removed), *([1] * (targets.ndim - 1))), task=task)
            losses.append(loss.view(len(removed), n).mean(dim=1))
        return torch.softmax(torch.cat(losses) - base, dim=0)

    # --- the penalty -----------------------------------------------------------------------------

    def _mirror_modes(self, model: TransferModel) -> None:
        for live, ref in zip(model.backbone.modules(), self._reference.modules(), strict=True):
            if isinstance(live, nn.modules.batchnorm._BatchNorm):
                ref.train(live.training)

    def _weighted(self, name: str, live: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        per_channel = channel_means((live - reference).pow(2))
        weights = self.attention.get(name)
        if weights is None or weights.numel() != per_channel.numel():
            return per_channel.mean()
        return (weights.to(per_channel.device, per_channel.dtype) * per_channel).sum()

    def penalty(
        self, model: TransferModel, *, images: torch.Tensor | None, features: torch.Tensor
    ) -> torch.Tensor | None:
        if images is None:
            raise ValueError("delta needs the images of each step (uses_inputs is True)")
        if not self.attention and not self._warned:
            self._warned = True
            warnings.warn(
                "delta: calibrate() was not called before training, so the channel attention is "
                "uniform (the feature-map L2 ablation, not DELTA); tlsearch's Trainer calls it",
                stacklevel=2,
            )
        self._reference.to(images.device)
        self._mirror_modes(model)
        with torch.no_grad():
            reference_features = self._reference(images)
        terms = [self._weighted(POOLED, features, reference_features)]
        if self.layers == "groups":
            terms += [
                self._weighted(name, self._live_maps[name], self._ref_maps[name])
                for name in self._ref_maps
                if name in self._live_maps and self._live_maps[name].shape == self._ref_maps[name].shape
            ]
        return self.strength * torch.stack(terms).sum()

    def teardown(self, model: TransferModel) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._live_maps.clear()
        self._ref_maps.clear()
        self._reference = None  # type: ignore[assignment]


def _task_loss(outputs: torch.Tensor, targets: torch.Tensor, *, task: str) -> torch.Tensor:
    """Per-image loss: cross-entropy (class indices), or squared error summed over targets."""
    if task == "classification":
        return F.cross_entropy(outputs, targets.long(), reduction="none")
    return (outputs - targets.float().view_as(outputs)).pow(2).sum(dim=1)


def fit_probe(
    features: torch.Tensor, targets: torch.Tensor, *, num_outputs: int, task: str, l2: float = 1e-2
) -> nn.Linear:
    """A linear classifier (L2-regularised logistic regression, L-BFGS) or regressor (ridge, closed
    form) on ``features`` for the target task: what DELTA measures channel importance with."""
    features = features.detach().float()
    n, d = features.shape
    probe = nn.Linear(d, num_outputs).to(features.device)
    if task != "classification":
        x = torch.cat([features, torch.ones(n, 1, device=features.device)], dim=1)
        y = targets.float().view(n, -1)
        ridge = l2 * n * torch.eye(d + 1, device=features.device)
        ridge[d, d] = 0.0  # no penalty on the bias
        solution = torch.linalg.lstsq(x.T @ x + ridge, x.T @ y).solution
        with torch.no_grad():
            probe.weight.copy_(solution[:d].T)
            probe.bias.copy_(solution[d])
        return probe.requires_grad_(False)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=100, line_search_fn="strong_wolfe")
    labels = targets.long()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(features), labels) + 0.5 * l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return probe.requires_grad_(False)


def _pooled_removal_losses(
    pooled: torch.Tensor, targets: torch.Tensor, probe: nn.Linear, task: str, chunk: int = 64
) -> torch.Tensor:
    """``(D,)``: the probe's mean loss with each pooled feature zeroed (exact: the probe is linear)."""
    logits = probe(pooled)
    out = []
    for first in range(0, pooled.shape[1], chunk):
        cols = slice(first, min(first + chunk, pooled.shape[1]))
        # (k, N, K): the logits without feature c = logits − f_c · W[:, c]
        without = logits[None] - pooled[:, cols].T[:, :, None] * probe.weight[:, cols].T[:, None, :]
        k = without.shape[0]
        flat_targets = targets.repeat(k, *([1] * (targets.ndim - 1)))
        loss = _task_loss(without.reshape(-1, logits.shape[1]), flat_targets, task=task)
        out.append(loss.view(k, -1).mean(dim=1))
    return torch.cat(out)


class BSS(Regularizer):
    """BSS (Batch Spectral Shrinkage): penalise the k smallest singular values of the batch's feature matrix.

    ``penalty = η · Σ_{i=1..k} σ_{-i}²`` of the ``(N, D)`` pooled features: small singular directions
    carry the pretrained knowledge that does not transfer, and shrinking them prevents negative
    transfer. Source: Chen et al., *Catastrophic Forgetting Meets Negative Transfer: Batch Spectral
    Shrinkage for Safe Transfer Learning*, NeurIPS 2019 (η = 0.001, k = 1 in the paper); searched by
    Quick-Tune. Needs only the features, so it works with cached features (then it is a constant).
    """

    name = "bss"
    needs_trainable_backbone = True  # on fixed features the penalty is a constant
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
