"""Built-in backbones: the ``timm`` and ``torchvision`` families, and a curated list across cost tiers.

Registered through the ``tlsearch`` entry-point group (``tlsearch_builtins.backbones``), like any
third-party plugin. Submodules: :mod:`._timm` (any timm model, wildcard expansion), :mod:`._torchvision`
(torchvision's registry), :mod:`._curated` (one plugin per curated model), :mod:`._cost` (parameters
and FLOPs measured on the meta device).
"""

from __future__ import annotations

from typing import Any

from tlsearch import hookimpl
from tlsearch_builtins.backbones._cost import measure_cost
from tlsearch_builtins.backbones._curated import CURATED, PACKAGED, CuratedTimmBackbone
from tlsearch_builtins.backbones._timm import (
    TimmBackbone,
    create_timm_model,
    expand_model_patterns,
    timm_data_config,
    timm_layer_groups,
)
from tlsearch_builtins.backbones._torchvision import (
    TorchvisionBackbone,
    module_layer_groups,
    strip_classifier,
)


@hookimpl
def tlsearch_register_backbones(register: Any) -> None:
    register.add(TimmBackbone)
    register.add(TorchvisionBackbone)
    for cls in CURATED:
        register.add(cls)


__all__ = [
    "CURATED",
    "PACKAGED",
    "CuratedTimmBackbone",
    "TimmBackbone",
    "TorchvisionBackbone",
    "create_timm_model",
    "expand_model_patterns",
    "measure_cost",
    "module_layer_groups",
    "strip_classifier",
    "timm_data_config",
    "timm_layer_groups",
]
