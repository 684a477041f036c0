"""The ``torchvision`` backbone family: any classification model of torchvision's registry.

Built with ``torchvision.models.get_model(name, weights=…)``; the weights enum comes from
``get_model_weights(name)`` (``weights_tag: DEFAULT`` or a tag such as ``IMAGENET1K_V2``). The
last ``nn.Linear`` (the ImageNet classifier) is replaced by ``nn.Identity``, so the module returns
pooled features of that layer's input width.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlsearch.errors import PluginError, format_choices
from tlsearch.kinds import Backbone, BuiltBackbone, multiples_of
from tlsearch.preprocessing import DataConfig
from tlsearch.space import Fixed, Hyperparameter, Required
from tlsearch_builtins.backbones._cost import cost_at_size, measure_cost
from tlsearch_builtins.backbones._timm import WEIGHTS_HELP, space_values
from tlsearch_builtins.hub import check_hub_weights, url_hub_sources
from tlsearch_builtins.weights import (
    ModelBuilders,
    check_weights_space,
    load_into,
    load_state_dict_file,
    resolve_weights_path,
)

AUX_LOGITS = ("googlenet", "inception_v3")  # built with aux_logits=False: one output in training too


def classification_models() -> list[str]:
    import torchvision.models as tvm

    return list(tvm.list_models(module=tvm))


def _check_name(name: str) -> None:
    valid = classification_models()
    if name not in valid:
        close = difflib.get_close_matches(str(name), valid, n=8, cutoff=0.6)
        raise PluginError(
            f"unknown torchvision model {name!r}; close matches: {', '.join(close) or '(none)'}; "
            f"valid choices: {format_choices(valid, limit=100)} (torchvision.models.list_models)"
        )


def _weights_enum(name: str, tag: str) -> Any:
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    try:
        return enum[tag]
    except KeyError:
        raise PluginError(
            f"torchvision model {name!r} has no weights {tag!r}; valid choices: {format_choices(m.name for m in enum)}, DEFAULT"
        ) from None


def torchvision_data_config(name: str, tag: str) -> DataConfig:
    """Preprocessing from the weights' own eval transform (known without downloading anything)."""
    transform = _weights_enum(name, tag).transforms()
    crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
    return DataConfig(
        input_size=crop,
        mean=tuple(float(x) for x in transform.mean),  # type: ignore[arg-type]
        std=tuple(float(x) for x in transform.std),  # type: ignore[arg-type]
        interpolation=str(transform.interpolation.value),
        crop_pct=min(1.0, crop / resize),
    )


def strip_classifier(model: nn.Module) -> int:
    """Replace the model's last ``nn.Linear`` by ``nn.Identity``; return that layer's input width."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise PluginError(f"{type(model).__name__} has no nn.Linear classifier to remove")
    name, linear = last
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return int(linear.in_features)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_container(module: nn.Module) -> bool:
    return any(_has_params(c) for c in module.children())


def _partition(module: nn.Module, prefix: str, loose: list[str]) -> list[tuple[nn.Module | None, list[str]]]:
    """``module``'s children as groups: a container child is one group (expandable later), a run of
    consecutive leaf children is one group; the module's own parameters go to ``loose``."""
    loose.extend(prefix + n for n, _ in module.named_parameters(recurse=False))
    out: list[tuple[nn.Module | None, list[str]]] = []
    run: list[str] = []
    for child_name, child in module.named_children():
        if not _has_params(child):
            continue
        names = [f"{prefix}{child_name}.{n}" for n, _ in child.named_parameters()]
        if _is_container(child):
            if run:
                out.append((None, run))
                run = []
            out.append((child, names))
        else:
            run.extend(names)
    if run:
        out.append((None, run))
    return out


def module_layer_groups(model: nn.Module, *, min_groups: int = 4) -> list[list[str]]:
    """Ordered layer groups of a model without timm's ``group_matcher``, from its module tree.

    Torchvision registers modules in forward order, so the top-level children are already ordered
    input → output. Runs of consecutive leaf modules (``conv1``, ``bn1``) form one group (the stem)
    and each container child (``layer1``, ``features``) one group; while there are fewer than
    ``min_groups`` groups, the largest container is replaced by its children (``features`` →
    ``features.0 … features.8``; a ViT's ``encoder`` → ``encoder.layers`` → its blocks).
    Parameters owned directly by an expanded module (class token, position embedding) join the
    first group. Examples: resnet → stem, layer1…layer4; efficientnet → features.0…features.8.
    """
    loose: list[str] = []
    groups = _partition(model, "", loose)
    prefix_of = {id(m): n + "." for n, m in model.named_modules()}
    while len(groups) < min_groups:
        expandable = [
            (sum(p.numel() for p in m.parameters()), i) for i, (m, _) in enumerate(groups) if m is not None
        ]
        if not expandable:
            break
        _, i = max(expandable)
        container = groups[i][0]
        assert container is not None
        groups[i : i + 1] = _partition(container, prefix_of[id(container)], loose)
    names = [list(g) for _, g in groups if g]
    if loose:
        names = [loose + names[0], *names[1:]] if names else [loose]
    return names


def _meta_torchvision(name: str) -> nn.Module:
    from torchvision.models import get_model

    model = get_model(name, weights=None)
    strip_classifier(model)
    return model


@functools.lru_cache(maxsize=64)
def _patch_size(name: str) -> int | None:
    """The patch size of a torchvision ViT (built on the meta device), None for other models."""
    from torchvision.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        model = _meta_torchvision(name)
    return int(model.patch_size) if isinstance(model, VisionTransformer) else None


def torchvision_weights_targets(model_names: list[str]) -> ModelBuilders:
    """For the up-front weights check: each model as :meth:`TorchvisionBackbone.build` loads a
    file into it (without its classifier when the file has fewer tensors), on the meta device."""

    def builder(name: str) -> Callable[[Mapping[str, torch.Tensor]], nn.Module]:
        def build(state: Mapping[str, torch.Tensor]) -> nn.Module:
            from torchvision.models import get_model

            _check_name(name)
            kwargs: dict[str, Any] = {"aux_logits": False} if name in AUX_LOGITS else {}
            with torch.device("meta"):
                module = get_model(name, weights=None, **kwargs)
            if len(state) < len(module.state_dict()):
                strip_classifier(module)
            return module

        return build

    return {name: builder(name) for name in model_names}


class TorchvisionBackbone(Backbone):
    """Any torchvision classification model by name (``torchvision.models.get_model``), classifier removed.

    ``weights: hub`` downloads the weights enum ``get_model_weights(model)[weights_tag]``; offline
    that is an error saying how to give a file (a torchvision ``.pth`` state dict, classifier
    included or not). Preprocessing comes from the weights' own eval transform. Layer groups come
    from the module tree (see :func:`module_layer_groups`): stem, stages or blocks, final layers.
    GoogLeNet and Inception-v3 are built with ``aux_logits=False``. ``drop_path_rate`` is passed as ``stochastic_depth_prob`` to models that have it (EfficientNet,
    ConvNeXt, Swin, MaxViT) and ignored by others (``info`` says ``unsupported``). The study's
    ``image_size`` reaches ViTs by rebuilding them for that size with the position embedding
    interpolated (convolutional models take any size as they are).
    Source: torchvision's model registry, https://pytorch.org/vision/stable/models.html.
    """

    name = "torchvision"
    family = "torchvision"
    hyperparameters = {
        "model": Required(str, help="a torchvision classification model, e.g. resnet18, efficientnet_b0"),
        "weights": Fixed("hub", help=WEIGHTS_HELP),
        "weights_tag": Fixed(
            "DEFAULT", help="which weights enum member: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2 …"
        ),
        "weights_key_map": Fixed("names", help="names | order"),
    }
    model: str
    weights: str
    weights_tag: str
    weights_key_map: str

    @classmethod
    def check_space(
        cls, space: Mapping[str, Hyperparameter], *, study_dir: Path | None
    ) -> dict[str, Hyperparameter]:
        """A weights file or reference is checked once, before any trial, against every model the
        space may take (see :mod:`tlsearch_builtins.weights`); relative paths from ``study_dir``."""
        return check_weights_space(
            space,
            study_dir=study_dir,
            models=lambda: torchvision_weights_targets([str(m) for m in space_values(space.get("model"))]),
        )

    @classmethod
    def check_available(cls, space: Mapping[str, Hyperparameter]) -> None:
        """``weights: hub``: each model's weights in torch hub's cache, or the host reachable (probed once)."""
        if "hub" in space_values(space.get("weights")):
            tags = [str(t) for t in space_values(space.get("weights_tag"))] or ["DEFAULT"]
            urls = {
                f"{m}:{tag}": _weights_enum(str(m), tag).url
                for m in space_values(space.get("model"))
                for tag in tags
            }
            check_hub_weights(url_hub_sources(urls))

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        _check_name(self.model)  # a misspelt name fails when the study is read, not in every trial

    def input_sizes(self) -> tuple[int, ...] | None:
        """A ViT takes the multiples of its patch size (its position embedding is interpolated to
        the size, see :func:`_resize_vision_transformer`); other models any size."""
        patch = _patch_size(self.model)
        return multiples_of(patch) if patch else None

    def build(self, **options: Any) -> BuiltBackbone:
        from torchvision.models import get_model

        _check_name(self.model)
        kwargs: dict[str, Any] = {"aux_logits": False} if self.model in AUX_LOGITS else {}
        rate = float(options.get("drop_path_rate") or 0.0)
        applied: float | str = rate
        if rate and _accepts_stochastic_depth(self.model):
            kwargs["stochastic_depth_prob"] = rate
        elif rate:
            applied = "unsupported"
        if "stochastic_depth_prob" in kwargs:
            try:  # only to learn whether the builder lets the caller set it (Swin fixes its own)
                with torch.device("meta"):
                    get_model(self.model, weights=None, **kwargs)
            except TypeError:
                kwargs.pop("stochastic_depth_prob")
                applied = "unsupported"
            except NotImplementedError:
                pass
        weights = self.weights if options.get("load_weights", True) else "random"
        if weights == "hub":
            enum = _weights_enum(self.model, self.weights_tag)
            try:
                module = get_model(self.model, weights=enum, **kwargs)
            except Exception as exc:
                raise PluginError(
                    f"could not download torchvision weights {enum} for {self.model!r} ({type(exc).__name__}: {exc}). "
                    "Offline? Give a local file with `weights: /path/to/weights.pth` (or .safetensors), "
                    "or `weights: random` to train from scratch on purpose."
                ) from None
            num_features = strip_classifier(module)
        else:
            module = get_model(self.model, weights=None, **kwargs)
            if weights == "random":
                num_features = strip_classifier(module)
            else:
                path = resolve_weights_path(self.weights)
                state = load_state_dict_file(path)
                headless = len(state) < len(module.state_dict())  # a checkpoint saved without the classifier
                if headless:
                    num_features = strip_classifier(module)
                load_into(module, state, key_map=self.weights_key_map, source=f"{str(path)!r}")
                if not headless:
                    num_features = strip_classifier(module)
        size = options.get("input_size")
        if size is not None:
            module = _resize_vision_transformer(
                module, int(size), rebuild=lambda **kw: get_model(self.model, **kwargs, **kw)
            )
        data_config = torchvision_data_config(self.model, self.weights_tag)
        cost = cost_at_size(  # at the trial's input size: costs follow it
            lambda: _meta_torchvision(self.model),
            key=f"tv:{self.model}",
            input_size=int(size) if size is not None else data_config.input_size,
            native_size=data_config.input_size,
        )
        return BuiltBackbone(
            module=module,
            num_features=num_features,
            data_config=data_config,
            layer_groups=module_layer_groups(module),
            info={
                "family": "torchvision",
                "model": self.model,
                "weights": self.weights,
                "params": sum(p.numel() for p in module.parameters()),
                "gflops": cost["gflops"],
                "input_size": int(size) if size is not None else data_config.input_size,
                "drop_path_rate": applied,
            },
        )

    def describe(self) -> dict[str, Any]:
        """Family, model, parameter count and FLOPs at the weights' input size (measured on the meta device)."""
        try:
            _check_name(self.model)
            size = torchvision_data_config(self.model, self.weights_tag).input_size
        except PluginError:
            return {"family": "torchvision", "model": self.model}
        cost = measure_cost(lambda: _meta_torchvision(self.model), key=f"tv:{self.model}", input_size=size)
        return {"family": "torchvision", "model": self.model, **cost}


def _resize_vision_transformer(
    module: nn.Module, size: int, *, rebuild: Callable[..., nn.Module]
) -> nn.Module:
    """A torchvision ViT for ``size`` px inputs, its position embedding interpolated (bicubic, as
    torchvision's ``interpolate_embeddings``; other weights unchanged); other models as they are.

    A torchvision ViT is built for one input size and refuses any other, unlike timm's (whose
    ``dynamic_img_size`` the timm backbones use), so the study's ``image_size`` needs a new module.
    """
    from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

    if not isinstance(module, VisionTransformer) or module.image_size == size:
        return module
    if size % module.patch_size:
        valid = ", ".join(str(module.patch_size * k) for k in range(4, 17))
        raise PluginError(
            f"image_size {size} is not a multiple of this ViT's patch size {module.patch_size}; "
            f"valid sizes include {valid}"
        )
    state = interpolate_embeddings(size, module.patch_size, module.state_dict())
    with torch.device("meta"):
        resized = rebuild(weights=None, image_size=size)
    strip_classifier(resized)
    resized.load_state_dict(state, strict=True, assign=True)
    return resized.train(module.training)


def _accepts_stochastic_depth(name: str) -> bool:
    """Whether the model's constructor takes ``stochastic_depth_prob`` (torchvision's name for drop-path)."""
    from torchvision.models import get_model_builder

    module = inspect.getmodule(get_model_builder(name))
    return module is not None and "stochastic_depth_prob" in inspect.getsource(module)
