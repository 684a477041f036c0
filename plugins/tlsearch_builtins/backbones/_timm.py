"""The ``timm`` backbone family: any timm model by name, with wildcard expansion of model names."""

from __future__ import annotations

import difflib
import fnmatch
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlsearch.errors import PluginError
from tlsearch.kinds import Backbone, BuiltBackbone, multiples_of
from tlsearch.preprocessing import INTERPOLATIONS, DataConfig
from tlsearch.space import Fixed, Hyperparameter, Required
from tlsearch_builtins.backbones._cost import cost_at_size, measure_cost
from tlsearch_builtins.hub import check_hub_weights, timm_hub_sources
from tlsearch_builtins.weights import (
    ModelBuilders,
    check_weights_space,
    load_into,
    load_state_dict_file,
    resolve_weights_path,
)

WEIGHTS_HELP = (
    "hub | random | a .safetensors/.pth file | package.module:attribute (see tlsearch_builtins.weights)"
)
WILDCARDS = set("*?[")


def timm_layer_groups(model: nn.Module) -> list[list[str]]:
    """The model's parameter names in ordered groups (stem → blocks → final norm), from timm's
    ``group_matcher(coarse=True)``; models without one fall back to their top-level children."""
    from timm.models import group_parameters

    names = [n for n, _ in model.named_parameters()]
    groups: list[list[str]] = []
    if hasattr(model, "group_matcher"):
        by_id = group_parameters(model, model.group_matcher(coarse=True))
        groups = [list(by_id[k]) for k in sorted(by_id)]
    else:
        by_child: dict[str, list[str]] = {}
        for n in names:
            by_child.setdefault(n.split(".")[0], []).append(n)
        groups = list(by_child.values())
    seen = {n for g in groups for n in g}
    leftover = [n for n in names if n not in seen]
    if leftover:
        groups.append(leftover)
    return [g for g in groups if g]


def timm_data_config(model: nn.Module) -> DataConfig:
    """The model's own pretrained preprocessing (timm's ``resolve_data_config``) as a :class:`DataConfig`."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    interpolation = cfg.get("interpolation", "bilinear")
    return DataConfig(
        input_size=int(cfg["input_size"][-1]),
        mean=tuple(float(x) for x in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(x) for x in cfg["std"]),  # type: ignore[arg-type]
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )


def _check_model_name(model_name: str) -> None:
    import timm

    if any(c in WILDCARDS for c in model_name):
        raise PluginError(
            f"timm model {model_name!r} is a pattern, not a model name; expand it with "
            "TimmBackbone.expand_overrides (or list the names: `model: [resnet18, resnet50]`)"
        )
    if not isinstance(model_name, str) or not timm.is_model(model_name):
        close = difflib.get_close_matches(str(model_name), _timm_names(), n=8, cutoff=0.6)
        raise PluginError(
            f"unknown timm model {model_name!r}; close matches: {', '.join(close) or '(none)'}. "
            "`python -c \"import timm; print(timm.list_models('pattern*'))\"` lists the valid names"
        )


@functools.cache
def _timm_names() -> tuple[str, ...]:
    """Every model name timm's registry knows (offline: a list in the installed package)."""
    import timm

    return tuple(timm.list_models())


def create_timm_model(model_name: str, *, weights: str, key_map: str, **kwargs: Any) -> nn.Module:
    """A timm model with its weights, as pooled-feature extractor (classifier removed).

    ``weights`` is ``hub``, ``random`` or a file (see :mod:`tlsearch_builtins.weights`). The hub
    being unreachable is an error that says how to give a file; there is no fallback to random.
    """
    import timm

    _check_model_name(model_name)
    if weights == "hub":
        try:
            model = timm.create_model(model_name, pretrained=True, **kwargs)
        except TypeError:
            raise
        except Exception as exc:
            raise PluginError(
                f"could not get pretrained weights for {model_name!r} from the hub ({type(exc).__name__}: {exc}). "
                "Offline? Give a local file with `weights: /path/to/weights.safetensors` (or .pth), "
                "or `weights: random` to train from scratch on purpose."
            ) from None
    else:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
        if weights != "random":
            path = resolve_weights_path(weights)
            load_into(model, load_state_dict_file(path), key_map=key_map, source=f"{str(path)!r}")
    model.reset_classifier(0)
    return model


@functools.lru_cache(maxsize=64)
def _patch_size(model_name: str) -> int | None:
    """The patch size of a timm ViT-like model (one with ``dynamic_img_size``: ViT, DeiT, EVA,
    DINOv2 …), whose input must be a multiple of it; None for other models (built on the meta
    device: no weights, no download)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if not hasattr(model, "dynamic_img_size") or patch is None:
        return None
    height, width = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return int(height) if height == width else None


def _fixes_input_size(model_name: str) -> bool:
    """Whether the timm model is built for one input size (a ViT-like model without ``dynamic_img_size``)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False)
    return hasattr(model, "dynamic_img_size") and not model.dynamic_img_size


def build_timm_backbone(
    model_name: str, *, weights: str, key_map: str, options: Mapping[str, Any]
) -> BuiltBackbone:
    """Build a timm model as a :class:`BuiltBackbone`, honouring the build options of
    :class:`~tlsearch.kinds.Backbone`:

    * ``drop_path_rate`` where the model has stochastic depth; a model whose constructor does not
      accept it is built without it, and ``info["drop_path_rate"]`` says ``"unsupported"``;
    * ``load_weights=False``: random initialisation (a checkpoint is loaded next);
    * ``input_size``: a model whose architecture fixes its input size (ViT's position embeddings)
      is built with ``dynamic_img_size=True``, so it takes that size with its pretrained weights
      unchanged (position embeddings are interpolated). Convolutional models need nothing.
    """
    if not options.get("load_weights", True):
        weights = "random"
    kwargs: dict[str, Any] = {}
    rate = float(options.get("drop_path_rate") or 0.0)
    if rate:
        kwargs["drop_path_rate"] = rate
    if options.get("input_size") and _fixes_input_size(model_name):
        kwargs["dynamic_img_size"] = True
    try:
        module = create_timm_model(model_name, weights=weights, key_map=key_map, **kwargs)
        applied: float | str = rate
    except TypeError as exc:
        if "drop_path_rate" not in str(exc):
            raise
        kwargs.pop("drop_path_rate")
        module = create_timm_model(model_name, weights=weights, key_map=key_map, **kwargs)
        applied = "unsupported"
    data_config = timm_data_config(module)
    size = int(options.get("input_size") or data_config.input_size)  # the trial's: costs follow it
    cost = cost_at_size(
        lambda: _meta_timm(model_name),
        key=f"timm:{model_name}",
        input_size=size,
        native_size=data_config.input_size,
    )
    return BuiltBackbone(
        module=module,
        # timm's num_features is the width before a conv head (MobileNetV3, LCNet); what the pooled
        # output has is head_hidden_size when the model has one.
        num_features=int(getattr(module, "head_hidden_size", None) or module.num_features),
        data_config=data_config,
        layer_groups=timm_layer_groups(module),
        info={
            "family": "timm",
            "model": model_name,
            "weights": weights,
            "params": sum(p.numel() for p in module.parameters()),
            "gflops": cost["gflops"],
            "input_size": size,
            "drop_path_rate": applied,
        },
    )


def timm_weights_targets(model_names: list[str]) -> ModelBuilders:
    """For the up-front weights check: each timm model as the trial builds it before loading a
    file into it (classifier included), on the meta device."""

    def builder(name: str) -> Any:
        def build(state: Mapping[str, torch.Tensor]) -> nn.Module:
            import timm

            _check_model_name(name)
            with torch.device("meta"):
                return timm.create_model(name, pretrained=False)

        return build

    return {name: builder(name) for name in model_names}


def space_values(hp: Hyperparameter | None) -> list[Any]:
    """Every value a (narrowed) hyperparameter may take: a fixed value or categorical choices."""
    if hp is None:
        return []
    choices = getattr(hp, "choices", None)
    return list(choices) if choices is not None else [getattr(hp, "value", hp.default)]


def _meta_timm(model_name: str) -> nn.Module:
    import timm

    return timm.create_model(model_name, pretrained=False, num_classes=0)


def expand_model_patterns(values: Any, *, pretrained_only: bool = True) -> list[str]:
    """Expand shell-style wildcards (``resnet*``, ``efficientnet_b[0-3]``) in timm model names.

    Names without a wildcard are kept as given. With ``pretrained_only`` a pattern matches only
    models that have pretrained weights in timm (what ``weights: hub`` needs), as
    ``timm.list_models(pattern, pretrained=True)`` does, with the weight tags removed.
    """
    import timm

    names: list[str] = []
    for value in values if isinstance(values, (list, tuple)) else [values]:
        if not isinstance(value, str) or not any(c in WILDCARDS for c in value):
            names.append(value)
            continue
        if pretrained_only:
            matched = sorted({n.split(".")[0] for n in timm.list_models(pretrained=True)})
            matched = [n for n in matched if fnmatch.fnmatchcase(n, value)]
        else:
            matched = timm.list_models(value)
        if not matched:
            raise PluginError(
                f"timm model pattern {value!r} matches no model (pretrained_only={pretrained_only})"
            )
        names.extend(n for n in matched if n not in names)
    return names


class TimmBackbone(Backbone):
    """Any timm model by name, as a pretrained feature extractor (timm.create_model, classifier removed).

    ``model`` is a timm name, or a list of names the search chooses among. Wildcards such as
    ``model: "convnext_*"`` are expanded against ``timm.list_models(pattern, pretrained=True)`` by
    :meth:`expand_overrides` (when the study is read); an unexpanded pattern reaching :meth:`build`
    is an error. Layer groups come from timm's ``group_matcher(coarse=True)``, preprocessing from
    the model's own pretrained data config. ``drop_path_rate`` (from the ``drop_path`` regularizer)
    is passed to models that have stochastic depth and ignored (``info`` says so) by others.
    Source: Wightman, *PyTorch Image Models* (timm), https://github.com/huggingface/pytorch-image-models.
    """

    name = "timm"
    family = "timm"
    hyperparameters = {
        "model": Required(
            str, help="a timm model name (e.g. resnet18), or a wildcard pattern like 'resnet*'"
        ),
        "weights": Fixed("hub", help=WEIGHTS_HELP),
        "weights_key_map": Fixed("names", help="names | order"),
    }
    model: str
    weights: str
    weights_key_map: str

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        _check_model_name(self.model)  # a misspelt name fails when the study is read, not in every trial

    @classmethod
    def expand_overrides(cls, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """A study's overrides with wildcard model names expanded to the matching timm names.

        Patterns match only models with pretrained weights unless ``weights`` is ``random``.
        """
        out = dict(overrides)
        if "model" in out:
            pretrained_only = out.get("weights", "hub") != "random"
            out["model"] = expand_model_patterns(out["model"], pretrained_only=pretrained_only)
            if len(out["model"]) == 1:
                out["model"] = out["model"][0]
        return out

    @classmethod
    def check_space(
        cls, space: Mapping[str, Hyperparameter], *, study_dir: Path | None
    ) -> dict[str, Hyperparameter]:
        """A weights file or reference is checked once, before any trial, against every model the
        space may take: it resolves, loads with ``weights_only=True`` and fits shape by shape
        (see :mod:`tlsearch_builtins.weights`); a relative path is made absolute from ``study_dir``."""
        return check_weights_space(
            space,
            study_dir=study_dir,
            models=lambda: timm_weights_targets([str(m) for m in space_values(space.get("model"))]),
        )

    @classmethod
    def check_available(cls, space: Mapping[str, Hyperparameter]) -> None:
        """``weights: hub``: each model's weights cached here, or the hub reachable (probed once)."""
        if "hub" in space_values(space.get("weights")):
            check_hub_weights(timm_hub_sources(str(m) for m in space_values(space.get("model"))))

    def build(self, **options: Any) -> BuiltBackbone:
        return build_timm_backbone(
            self.model, weights=self.weights, key_map=self.weights_key_map, options=options
        )

    def input_sizes(self) -> tuple[int, ...] | None:
        """A ViT-like model takes the multiples of its patch size (timm refuses others in every
        forward); a convolutional one any size."""
        patch = _patch_size(self.model)
        return multiples_of(patch) if patch else None

    def describe(self) -> dict[str, Any]:
        """Family, model, parameter count and FLOPs at the default input size (measured on the meta device)."""
        try:
            _check_model_name(self.model)
        except PluginError:
            return {"family": "timm", "model": self.model}
        return {
            "family": "timm",
            "model": self.model,
            **measure_cost(lambda: _meta_timm(self.model), key=f"timm:{self.model}"),
        }
