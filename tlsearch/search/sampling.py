"""Composing the search space of a trial from the plugins' own spaces, define-by-run.

A trial's *choices* are one flat, JSON-able mapping, the same names Optuna records as parameters
(plus the values a study fixed, which Optuna does not record)::

    {"backbone": "timm", "backbone.timm.model": "resnet18", "head": "linear",
     "freezing": "layer_decay", "freezing.layer_decay.decay": 0.7,
     "regularizer.label_smoothing": True, "regularizer.label_smoothing.epsilon": 0.1,
     "train.lr": 0.001}

:func:`instantiate` turns choices back into plugin objects, so a finished trial can be rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tlsearch.config import PluginChoice, ResolvedSpace
from tlsearch.data.sizes import derived_image_size
from tlsearch.kinds import Backbone, FreezingStrategy, Head, Regularizer, TransferModel
from tlsearch.registry import Registry
from tlsearch.space import Categorical, Fixed, _Trial
from tlsearch.train import merge_options


def _pick(trial: _Trial, key: str, options: tuple[PluginChoice, ...]) -> PluginChoice:
    by_name = {c.name: c for c in options}
    name = Categorical(tuple(by_name)).suggest(trial, key)
    return by_name[name]


def _strategy(choice: PluginChoice, params: dict[str, Any]) -> FreezingStrategy | None:
    """The trial's freezing strategy, for the regularizers' :meth:`~Regularizer.applies_to`
    (None when it cannot be made here: the trial then fails where plugins are instantiated)."""
    if choice.plugin is None:
        return None
    try:
        strategy = choice.plugin(**params)
    except Exception:  # noqa: BLE001 - reported with its plugin's name when the trial builds it
        return None
    return strategy if isinstance(strategy, FreezingStrategy) else None


def _applies(reg: PluginChoice, strategy: FreezingStrategy | None) -> bool:
    plugin = reg.plugin
    if strategy is None or plugin is None or not issubclass(plugin, Regularizer):
        return True
    return bool(plugin.applies_to(strategy))


DATA_KEYS = ("image_size", "crop_pct", "crop_mode")


def _sample_data(
    trial: _Trial, space: ResolvedSpace, backbone: PluginChoice, params: dict[str, Any]
) -> dict[str, Any]:
    """The trial's input size, eval crop and resize mode as ``data.<name>`` choices: sampled when
    the study lists choices, recorded when it fixes one, absent when the backbone's own applies.
    A backbone's own ``image_size`` list is a separate Optuna parameter
    (``data.image_size.<backbone>``): each backbone has its own choices. A study that sets no
    size records the data-derived one (:func:`derived_image_size`) like a fixed one."""
    out: dict[str, Any] = {}
    for name in DATA_KEYS:
        hp = getattr(space, name)
        param = f"data.{name}"
        if name == "image_size" and backbone.image_size is not None:
            hp, param = backbone.image_size, f"data.image_size.{backbone.name}"
        value = hp.suggest(trial, param)
        if value is None and name == "image_size":
            value = derived_image_size(space, backbone, params)
        if value is not None:
            out[f"data.{name}"] = value
    return out


def data_choices(choices: dict[str, Any], data: Any = None) -> dict[str, Any]:
    """``image_size``, ``crop_pct``, ``crop_mode`` of a trial, for :func:`build_model`: its choices,
    else (trials recorded before these were choices) the study's ``data`` settings when they fix a value."""
    out: dict[str, Any] = {}
    for name in DATA_KEYS:
        fixed = getattr(data, name, None)
        out[name] = choices.get(f"data.{name}", None if isinstance(fixed, list) else fixed)
    return out


def sample_choices(trial: _Trial, space: ResolvedSpace) -> dict[str, Any]:
    """Sample one trial's plugins and hyperparameters (define-by-run, namespaced names).

    The space is conditional: a regularizer that has no effect under the sampled freezing strategy
    (:meth:`Regularizer.applies_to`, e.g. L2-SP with a linear probe) is recorded as off without
    sampling it, so the search spends no trial on it there."""
    choices: dict[str, Any] = {}
    strategy: FreezingStrategy | None = None
    for key in ("backbone", "head", "freezing"):
        choice = _pick(trial, key, getattr(space, key))
        choices[key] = choice.name
        params = choice.space.sample(trial, f"{key}.{choice.name}")
        for pname, value in params.items():
            choices[f"{key}.{choice.name}.{pname}"] = value
        if key == "freezing":
            strategy = _strategy(choice, params)
        if key == "backbone":
            choices.update(_sample_data(trial, space, choice, params))
    for reg in space.regularizers:
        prefix = f"regularizer.{reg.name}"
        if not _applies(reg, strategy):
            choices[prefix] = False
            continue
        enabled = bool(reg.enabled.suggest(trial, prefix))
        choices[prefix] = enabled
        if enabled:
            for pname, value in reg.space.sample(trial, prefix).items():
                choices[f"{prefix}.{pname}"] = value
    choices.update(sample_recipe(trial, space))
    return choices


def sample_recipe(trial: _Trial, space: ResolvedSpace) -> dict[str, Any]:
    """The searched training settings of a trial, each under ``train.<setting>``.

    A setting the study fixes is not recorded (older trials lack them; the trial takes the study's
    value). ``train.lr`` is always recorded; a searched optimizer with no ``lr`` in the study is
    sampled from its own range (SGD's steps are ~30× AdamW's: one range would waste most trials),
    under ``train.lr.<optimizer>`` for Optuna (AdamW keeps ``train.lr``) and recorded as
    ``train.lr`` too.
    ``train.randaugment_magnitude`` is sampled only for trials that use RandAugment.
    """
    choices: dict[str, Any] = {}
    optimizer = space.optimizer.suggest(trial, "train.optimizer")
    if not isinstance(space.optimizer, Fixed):
        choices["train.optimizer"] = optimizer
    lr = space.lr_by_optimizer.get(str(optimizer))
    if lr is None:
        choices["train.lr"] = float(space.lr.suggest(trial, "train.lr"))
    else:
        choices["train.lr"] = choices[f"train.lr.{optimizer}"] = float(
            lr.suggest(trial, f"train.lr.{optimizer}")
        )
    for key in ("warmup", "clip_grad_norm", "random_erasing"):
        hp = getattr(space, key)
        if not isinstance(hp, Fixed):
            choices[f"train.{key}"] = float(hp.suggest(trial, f"train.{key}"))
    for key in ("batch_size", "augment", "ema"):
        hp = getattr(space, key)
        if not isinstance(hp, Fixed):
            choices[f"train.{key}"] = hp.suggest(trial, f"train.{key}")
    augment = choices.get("train.augment", space.augment.suggest(trial, "train.augment"))
    if augment == "randaugment" and not isinstance(space.randaugment_magnitude, Fixed):
        magnitude = space.randaugment_magnitude.suggest(trial, "train.randaugment_magnitude")
        choices["train.randaugment_magnitude"] = int(magnitude)
    return choices


@dataclass
class TrialPlugins:
    """The plugin objects of one trial."""

    backbone: Backbone
    head: Head
    freezing: FreezingStrategy
    regularizers: list[Regularizer]

    def names(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone.name,
            "head": self.head.name,
            "freezing": self.freezing.name,
            "regularizers": [r.name for r in self.regularizers],
        }


def _params(choices: dict[str, Any], prefix: str) -> dict[str, Any]:
    start = prefix + "."
    return {
        k[len(start) :]: v for k, v in choices.items() if k.startswith(start) and "." not in k[len(start) :]
    }


def instantiate(choices: dict[str, Any], registry: Registry) -> TrialPlugins:
    """The plugin objects that ``choices`` describe."""
    made: dict[str, Any] = {}
    for key in ("backbone", "head", "freezing"):
        info = registry.get(key, choices[key])
        made[key] = info.cls(**_params(choices, f"{key}.{choices[key]}"))
    regularizers: list[Regularizer] = []
    for key, value in choices.items():
        if key.startswith("regularizer.") and key.count(".") == 1 and value:
            name = key.split(".", 1)[1]
            regularizer = registry.get("regularizer", name).cls(**_params(choices, key))
            assert isinstance(regularizer, Regularizer)
            regularizers.append(regularizer)
    return TrialPlugins(made["backbone"], made["head"], made["freezing"], regularizers)


def build_model(
    plugins: TrialPlugins,
    *,
    num_outputs: int,
    image_size: int | None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    load_weights: bool = True,
    backbone_seed: int | None = None,
    head_seed: int | None = None,
) -> TransferModel:
    """Backbone + head of a trial.

    The backbone gets the options its regularizers ask for, the trial's ``image_size`` (which also
    overrides its preprocessing size) and, when a checkpoint is loaded next, ``load_weights=False``;
    ``crop_pct`` and ``crop_mode`` replace its eval crop and resize mode (None keeps its own).

    Randomly initialised weights come from ``backbone_seed`` and ``head_seed`` when given (each
    seeds torch's generator just before that part is built), so a trial is reproducible whatever ran
    before it in the process. Trials pass the study's seed for the backbone, the one the ranking
    uses too: a random-weight backbone is then the same network in every trial, and its features
    one feature-cache entry; the head's seed is the trial's own.
    """
    options = merge_options(plugins.regularizers, "backbone_options")
    if image_size is not None:
        options["input_size"] = image_size
    if not load_weights:
        options["load_weights"] = False
    if backbone_seed is not None:
        torch.manual_seed(backbone_seed)
    built = plugins.backbone.build(**options)
    if image_size is not None:
        built.data_config = built.data_config.with_size(image_size)
    if crop_pct is not None or crop_mode is not None:
        built.data_config = built.data_config.with_eval(crop_pct=crop_pct, crop_mode=crop_mode)
    if head_seed is not None:
        torch.manual_seed(head_seed)
    return TransferModel(built, plugins.head.build(built.num_features, num_outputs))


def backbone_model(choices: dict[str, Any], info: dict[str, Any] | None = None) -> str:
    """The concrete model behind a trial's backbone (``resnet18`` where the plugin is ``timm``):
    the built backbone's ``info["model"]`` when given and set, else the backbone's ``model``
    hyperparameter (timm, torchvision), else the plugin's own name (a curated backbone is its model).
    Trials record it as the user attribute ``backbone_model``; exports as ``backbone_model``."""
    backbone = choices["backbone"]
    model = (info or {}).get("model") or choices.get(f"backbone.{backbone}.model")
    return str(model or backbone)


def describe_choices(choices: dict[str, Any]) -> str:
    """A one-line summary: ``timm(resnet18) @160px + linear | layer_decay | label_smoothing, mixup``
    (the size only when the trial records one)."""
    backbone = choices["backbone"]
    model = choices.get(f"backbone.{backbone}.model")
    regs = [
        k.split(".", 1)[1]
        for k, v in choices.items()
        if k.startswith("regularizer.") and k.count(".") == 1 and v
    ]
    size = choices.get("data.image_size")
    return (
        f"{backbone}{f'({model})' if model else ''}{f' @{size}px' if size else ''}"
        f" + {choices['head']} | {choices['freezing']}"
        f" | {', '.join(regs) or 'no regularizer'} | lr {choices['train.lr']:.2g}"
    )
