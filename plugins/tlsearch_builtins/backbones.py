"""Built-in backbones: any timm model by name."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tlsearch import hookimpl
from tlsearch.errors import PluginError
from tlsearch.kinds import Backbone, BuiltBackbone
from tlsearch.preprocessing import INTERPOLATIONS, DataConfig
from tlsearch.space import Fixed, Required
from tlsearch_builtins.weights import load_into, load_state_dict_file, resolve_weights_path

WEIGHTS_HELP = "hub | random | a .safetensors/.pth file | package.module:attribute (see tlsearch_builtins.weights)"


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


def create_timm_model(model_name: str, *, weights: str, key_map: str, **kwargs: Any) -> nn.Module:
    """A timm model with its weights, as pooled-feature extractor (classifier removed)."""
    import timm

    if model_name not in timm.list_models() and model_name not in timm.list_models(pretrained=True):
        raise PluginError(
            f"unknown timm model {model_name!r}; `python -c \"import timm; print(timm.list_models('pattern*'))\"` "
            "lists the valid names"
        )
    if weights == "hub":
        try:
            model = timm.create_model(model_name, pretrained=True, **kwargs)
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


class TimmBackbone(Backbone):
    """Any timm model by name, as a pretrained feature extractor (timm.create_model, classifier removed).

    Layer groups come from timm's ``group_matcher`` and preprocessing from the model's own
    pretrained data config. Source: Wightman, *PyTorch Image Models* (timm).
    """

    name = "timm"
    family = "timm"
    hyperparameters = {
        "model": Required(str, help="a timm model name, e.g. resnet18, efficientnet_lite0"),
        "weights": Fixed("hub", help=WEIGHTS_HELP),
        "weights_key_map": Fixed("names", help="names | order"),
    }
    model: str
    weights: str
    weights_key_map: str

    def build(self, **options: Any) -> BuiltBackbone:
        kwargs = {}
        if options.get("drop_path_rate"):
            kwargs["drop_path_rate"] = float(options["drop_path_rate"])
        module = create_timm_model(self.model, weights=self.weights, key_map=self.weights_key_map, **kwargs)
        return BuiltBackbone(
            module=module,
            num_features=int(module.num_features),
            data_config=timm_data_config(module),
            layer_groups=timm_layer_groups(module),
            info={
                "model": self.model,
                "weights": self.weights,
                "params": sum(p.numel() for p in module.parameters()),
            },
        )


@hookimpl
def tlsearch_register_backbones(register: Any) -> None:
    register.add(TimmBackbone)


__all__ = ["TimmBackbone", "create_timm_model", "timm_data_config", "timm_layer_groups", "torch"]
