"""The model a trial trains: a backbone's feature extractor followed by a head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tlsearch.preprocessing import DataConfig


@dataclass
class BuiltBackbone:
    """What :meth:`Backbone.build` returns.

    ``module`` maps a normalised NCHW batch to *pooled* features of shape ``(N, num_features)``
    (a timm model after ``reset_classifier(0)``: its ``forward``, not its ``forward_features``,
    which is unpooled). ``num_features`` is that width: the heads' ``in_features``.

    ``data_config`` (:class:`~tlsearch.preprocessing.DataConfig`) is the preprocessing the weights
    expect: ``input_size`` (square side, px), ``mean``/``std`` (RGB, of [0, 1] pixels),
    ``interpolation`` (``nearest``, ``bilinear``, ``bicubic``, ``lanczos``), ``crop_pct`` (eval
    resize to ``input_size / crop_pct``, then centre crop) and ``crop_mode`` (``center`` or
    ``squash``). Every backbone returns one; the study's ``data.image_size``/``crop_pct``/
    ``crop_mode`` override its fields, and the exported model records the result.

    ``layer_groups`` lists the module's parameter names in ordered groups, input → output (stem
    first); every parameter of ``module`` is in exactly one group, and there are at least two.
    Freezing strategies act on these groups (:func:`tlsearch.kinds.freezing.backbone_group_params`).

    ``info``: facts about what was built, copied into the trial's ``backbone`` user attribute and
    its checkpoint. Keys the core reads: ``params`` (parameter count; the contract checks it is
    exact), ``gflops`` (forward GFLOPs per image at the trial's input size: the cost-aware pruner
    and cost objectives and constraints use it; leave it out if unknown), ``model`` (a concrete model name: shown in
    listings, and the compile decision keys on it). Keys shown as given: ``family``, ``weights``
    (where the weights came from), ``input_size``, ``drop_path_rate`` (the rate applied, or
    ``"unsupported"``). Values must be JSON-serialisable.
    """

    module: nn.Module
    num_features: int
    data_config: DataConfig
    layer_groups: list[list[str]]
    info: dict[str, Any] = field(
        default_factory=dict
    )  # e.g. {"params": 5.3e6, "gflops": 0.4, "weights": "hub"}


class TransferModel(nn.Module):
    """``head(backbone(x))`` plus what freezing strategies and regularizers need to know.

    Parameter names are ``backbone.*`` and ``head.*``; :meth:`backbone_groups` gives the backbone's
    parameters in ordered layer groups (input → output).
    """

    def __init__(self, backbone: BuiltBackbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.module
        self.head = head
        self.num_features = backbone.num_features
        self.data_config = backbone.data_config
        self.layer_group_names = [list(g) for g in backbone.layer_groups]
        self.info = dict(backbone.info)
        named = dict(self.backbone.named_parameters())
        grouped = [n for g in self.layer_group_names for n in g]
        missing = [n for n in named if n not in set(grouped)]
        unknown = [n for n in grouped if n not in named]
        if missing or unknown or len(grouped) != len(set(grouped)):
            raise ValueError(
                "layer_groups must list every backbone parameter exactly once; "
                f"missing: {missing[:5]}, unknown: {unknown[:5]}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's **pooled** features ``(N, num_features)``: what the head takes.

        Unlike timm's ``forward_features``, which returns the unpooled feature map (``(N, C, H, W)``
        for a CNN, tokens for a ViT), this is what timm calls ``forward_head(…, pre_logits=True)``.
        A regularizer that needs feature maps (DELTA does) hooks the backbone's modules instead.
        """
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def backbone_groups(self) -> list[list[nn.Parameter]]:
        """The backbone's parameters in ordered layer groups, input → output."""
        named = dict(self.backbone.named_parameters())
        return [[named[n] for n in group] for group in self.layer_group_names]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())
