"""Study-level checks that need the plugins: run once when a study is read, before any work.

:func:`check_study` looks at what the search may combine and refuses, as one
:class:`~tlsearch.errors.ConfigError` naming the file and the field, what would otherwise fail (or
do nothing) in every trial:

* a plugin listed for a task it does not fit (its ``tasks``), e.g. ``label_smoothing`` or the
  ``regression`` head in a classification study;
* a ``training.loss`` that does not fit the task;
* a plugin whose ``__init__`` refuses a value of the study's narrowed space: each plugin is
  instantiated at the *corners* of that space (every range at its low end, then at its high end,
  then each categorical choice once, the rest at their low ends). This is bounded (2 + the number of
  choices, not the product), and it runs the plugin's own checks, such as an unknown timm model;
* a regularizer whose ``optimizer_options``/``loss_options`` return keys the trainer does not read;
* an ``image_size`` (the study's, or a backbone's own) that a fixed-size backbone cannot take;
* a regularizer switched on that has no effect under any of the study's freezing strategies.

:func:`check_trainer_options` is the part the :class:`~tlsearch.train.Trainer` repeats for scripts
that build one directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tlsearch.errors import ConfigError, format_choices
from tlsearch.kinds._base import Plugin
from tlsearch.kinds.regularizer import LOSS_OPTIONS, OPTIMIZER_OPTIONS, Regularizer
from tlsearch.space import Categorical, Fixed, Float, Hyperparameter, Int

if TYPE_CHECKING:
    from tlsearch.config import PluginChoice, ResolvedSpace, StudyConfig

#: the values of ``training.loss`` each task accepts (``auto``: cross-entropy, or mse for regression)
LOSSES = {
    "classification": ("auto", "cross_entropy"),
    "regression": ("auto", "mse", "huber"),
    "multilabel": ("auto", "bce"),  # auto: BCE-with-logits, one sigmoid per label
}


#: the loss options (of :data:`LOSS_OPTIONS`) a task other than classification honours
TASK_LOSS_OPTIONS = {"multilabel": ("class_weighting", "class_weighting_beta", "focal_gamma")}


def check_loss(task: str, loss: str, *, where: str = "training.loss") -> None:
    """Refuse a loss that does not fit ``task`` (e.g. ``cross_entropy`` for regression)."""
    valid = LOSSES.get(task, ())
    if loss not in valid:
        raise ConfigError(
            f"{where}: loss {loss!r} does not fit task {task!r}; valid choices: {', '.join(valid)}"
        )


def check_trainer_options(
    *, task: str, loss: str, loss_options: Mapping[str, Any], optimizer_options: Mapping[str, Any]
) -> None:
    """What the trainer can honour: the loss for the task, and only the option keys it reads."""
    check_loss(task, loss)
    unknown = sorted(set(loss_options) - set(LOSS_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown loss option(s) {unknown} from regularizers; valid: {', '.join(LOSS_OPTIONS)}"
        )
    allowed = LOSS_OPTIONS if task == "classification" else TASK_LOSS_OPTIONS.get(task, ())
    refused = sorted(set(loss_options) - set(allowed))
    if refused:
        raise ConfigError(
            f"loss option(s) {refused} from regularizers do not apply to task {task!r}"
            + (f"; it takes {', '.join(allowed)}" if allowed else "")
        )
    unknown = sorted(set(optimizer_options) - set(OPTIMIZER_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown optimizer option(s) {unknown} from regularizers; valid: {', '.join(OPTIMIZER_OPTIONS)}"
        )


def _ends(hp: Hyperparameter) -> tuple[Any, Any]:
    """The lowest and highest value the search can give ``hp`` (first and last choice of a categorical)."""
    if isinstance(hp, Int):
        return hp.low, hp.top
    if isinstance(hp, Float):
        return hp.low, hp.high
    if isinstance(hp, Categorical):
        return hp.choices[0], hp.choices[-1]
    if isinstance(hp, Fixed):
        return hp.value, hp.value
    return hp.default, hp.default  # Required: resolved to a value before this runs


def corners(params: Mapping[str, Hyperparameter]) -> Iterator[dict[str, Any]]:
    """The corners of a space, without repeats: all low ends, all high ends, then each categorical
    choice once with the other hyperparameters at their low ends."""
    low = {name: _ends(hp)[0] for name, hp in params.items()}
    high = {name: _ends(hp)[1] for name, hp in params.items()}
    seen: list[dict[str, Any]] = []
    candidates = [low, high]
    for name, hp in params.items():
        if isinstance(hp, Categorical):
            candidates += [{**low, name: choice} for choice in hp.choices]
    for values in candidates:
        if values not in seen:
            seen.append(values)
            yield values


def _check_choice(
    choice: PluginChoice, cls: type[Plugin], *, task: str, where: str, section_choices: list[str]
) -> None:
    if task not in cls.tasks:
        fitting = ", ".join(section_choices) if section_choices else "(none registered)"
        raise ConfigError(
            f"{where}: the {choice.kind} {choice.name!r} only fits task {', '.join(cls.tasks)}, "
            f"and this study's task is {task!r}; {choice.kind}s that fit it: {fitting}"
        )
    if choice.enabled == Fixed(False):
        return  # a regularizer switched off is never built
    for values in corners(choice.space.params):
        try:
            plugin = cls(**values)
            options: dict[str, Any] = {}
            if isinstance(plugin, Regularizer):
                options = {
                    "loss_options": plugin.loss_options(),
                    "optimizer_options": plugin.optimizer_options(),
                }
        except Exception as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise ConfigError(
                f"{where}: the {choice.kind} {choice.name!r} ({cls.__module__}.{cls.__qualname__}) refuses "
                f"the values {shown or '(none)'} of the study's space: {type(exc).__name__}: {exc}"
            ) from None
        if options:
            for method, valid in (("loss_options", LOSS_OPTIONS), ("optimizer_options", OPTIMIZER_OPTIONS)):
                unknown = sorted(set(options[method]) - set(valid))
                if unknown:
                    raise ConfigError(
                        f"{where}: the regularizer {choice.name!r} returns {method} {unknown} that the "
                        f"trainer does not read; valid: {', '.join(valid)}"
                    )


def _values(hp: Hyperparameter) -> list[Any]:
    if isinstance(hp, Categorical):
        return list(hp.choices)
    return [hp.value] if isinstance(hp, Fixed) and hp.value is not None else []


def check_image_sizes(choice: PluginChoice, cls: type[Plugin], space: ResolvedSpace, *, where: str) -> None:
    """Refuse an ``image_size`` the backbone cannot take (:meth:`Backbone.input_sizes`: a
    fixed-size model, or a ViT's multiples of its patch size), naming the backbone and the sizes
    it takes."""
    sizes = _values(choice.image_size if choice.image_size is not None else space.image_size)
    if not sizes:
        return
    for values in corners(choice.space.params):
        try:
            accepted = cls(**values).input_sizes()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - _check_choice reports a refused corner
            continue
        if accepted is None:
            continue
        bad = [s for s in sizes if s not in accepted]
        if bad:
            shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise ConfigError(
                f"{where}: the backbone {choice.name!r}{f' ({shown})' if shown else ''} cannot take "
                f"image_size {', '.join(map(str, bad))}; the sizes it takes: {describe_sizes(accepted)}"
            )


def describe_sizes(sizes: Sequence[int]) -> str:
    """``sizes`` for a message: listed, or as "multiples of N up to M" when they are every multiple
    of their smallest (a ViT's patch sizes, :func:`tlsearch.kinds.multiples_of`).

    >>> describe_sizes((224, 256))
    '224, 256'
    >>> describe_sizes(tuple(range(14, 1025, 14)))
    'multiples of 14 up to 1022 (14, 28, 42, …, 224, …)'
    """
    step = sizes[0] if sizes else 0
    if len(sizes) > 6 and tuple(sizes) == tuple(range(step, sizes[-1] + 1, step)):
        near = next((s for s in sizes if s >= 224), sizes[-1])
        return f"multiples of {step} up to {sizes[-1]} ({step}, {2 * step}, {3 * step}, …, {near}, …)"
    return ", ".join(map(str, sizes))


def check_regularizers_apply(space: ResolvedSpace, registry: Any, *, source: str) -> None:
    """Refuse a regularizer the study switches on (``enabled: true``) that has no effect under any
    of its freezing strategies (:meth:`Regularizer.applies_to`): the search would never sample it."""
    strategies = []
    for choice in space.freezing:
        cls = registry.get(choice.kind, choice.name).cls
        for values in corners(choice.space.params):
            try:
                strategies.append(cls(**values))
            except Exception:  # noqa: BLE001 - _check_choice reports a refused corner
                continue
    for reg in space.regularizers:
        cls = registry.get(reg.kind, reg.name).cls
        if reg.enabled != Fixed(True) or not strategies:
            continue
        if not any(cls.applies_to(strategy) for strategy in strategies):
            names = ", ".join(c.name for c in space.freezing)
            kind = space.freezing[0].kind
            training = [
                n
                for n in registry.names(kind)
                if not getattr(registry.get(kind, n).cls, "backbone_frozen", False)
            ]
            raise ConfigError(
                f"{source}: space.regularizers.{reg.name}: switched on, but it has no effect with a "
                f"frozen backbone, and every freezing strategy of the study keeps it frozen ({names}); "
                f"add one that trains the backbone ({', '.join(training) or 'none installed'}) or drop "
                "the regularizer"
            )


def check_study(config: StudyConfig, space: ResolvedSpace, registry: Any) -> None:
    """Refuse, before any work, the combinations of task, loss and plugins that cannot run (see the module doc)."""
    source = str(config.source or "<study>")
    check_loss(config.task, config.training.loss, where=f"{source}: training.loss")
    for section in ("backbone", "head", "freezing", "regularizers"):
        choices: tuple[PluginChoice, ...] = getattr(space, section)
        for choice in choices:
            cls = registry.get(choice.kind, choice.name).cls
            fitting = [
                name for name, info in registry.plugins[choice.kind].items() if config.task in info.cls.tasks
            ]
            _check_choice(
                choice,
                cls,
                task=config.task,
                where=f"{source}: space.{section}.{choice.name}",
                section_choices=[format_choices(sorted(fitting))] if fitting else [],
            )
            if section == "backbone":
                check_image_sizes(choice, cls, space, where=f"{source}: space.{section}.{choice.name}")
    check_regularizers_apply(space, registry, source=source)
