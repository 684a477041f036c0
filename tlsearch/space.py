"""Hyperparameter declarations: what a plugin may be tuned over, and how a study narrows it.

A plugin declares its hyperparameters as a mapping of name → :class:`Float`, :class:`Int`,
:class:`Categorical` or :class:`Fixed`. A study may narrow each one in YAML::

    lr_decay: {low: 0.6, high: 0.9}      # a new range (type kept from the declaration)
    activation: [gelu, relu]             # a list: a categorical choice among these values
    n_frozen: 2                          # a scalar: fixed, not searched

The search then samples each one define-by-run under a namespaced name
(``freezing.layer_decay.lr_decay``), so studies stay readable in optuna-dashboard.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tlsearch.errors import ConfigError


class _Trial(Protocol):  # the part of optuna.Trial a hyperparameter needs (keeps this module optuna-free)
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = ...) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = ..., log: bool = ...) -> int: ...
    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class Float:
    """A real-valued hyperparameter in ``[low, high]``, sampled on a log scale when ``log``."""

    low: float
    high: float
    log: bool = False
    default: float | None = None
    help: str = ""

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"Float: low must be <= high but got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"Float: a log range needs low > 0 but got low={self.low}")

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a number inside ``[low, high]``."""
        return _is_number(value) and math.isfinite(float(value)) and self.low <= value <= self.high

    def default_problem(self) -> str | None:
        """Why the declared default cannot be used (outside the range), or None when it can."""
        if self.default is None or self.contains(self.default):
            return None
        return f"default {self.default!r} is outside its own range {self.describe()}"

    def suggest(self, trial: _Trial, name: str) -> float:
        if self.low == self.high:
            return float(self.low)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        return f"float [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class Int:
    """An integer hyperparameter in ``[low, high]`` (inclusive)."""

    low: int
    high: int
    step: int = 1
    log: bool = False
    default: int | None = None
    help: str = ""

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"Int: low must be <= high but got low={self.low}, high={self.high}")
        if self.step < 1:
            raise ValueError(f"Int: step must be >= 1 but got {self.step}")
        if self.log and self.step != 1:
            raise ValueError(
                f"Int: step and log cannot be combined (Optuna samples a log range without steps); "
                f"got step={self.step}, log=True"
            )
        if self.log and self.low < 1:
            raise ValueError(f"Int: a log range needs low >= 1 but got low={self.low}")

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is an integer inside ``[low, high]`` (on the grid of ``step``)."""
        if not _is_number(value) or not float(value).is_integer():
            return False
        return self.low <= value <= self.high and (int(value) - self.low) % self.step == 0

    def default_problem(self) -> str | None:
        """Why the declared default cannot be used (outside the range), or None when it can."""
        if self.default is None or self.contains(self.default):
            return None
        return f"default {self.default!r} is outside its own range {self.describe()}"

    @property
    def top(self) -> int:
        """The largest value the search can sample: ``high`` rounded down to the grid of ``step``."""
        return self.low + (self.high - self.low) // self.step * self.step

    def suggest(self, trial: _Trial, name: str) -> int:
        if self.low == self.high:
            return int(self.low)
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        return f"int [{self.low}, {self.high}]" + (f" step {self.step}" if self.step != 1 else "")


@dataclass(frozen=True)
class Categorical:
    """A choice among ``choices`` (strings, numbers, booleans or None)."""

    choices: tuple[Any, ...]
    default: Any = None
    help: str = ""

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError("Categorical: choices must not be empty")

    def contains(self, value: Any) -> bool:
        return value in self.choices

    def default_problem(self) -> str | None:
        """Why the declared default cannot be used (not a choice), or None when it can."""
        if self.default is None or self.contains(self.default):
            return None
        return f"default {self.default!r} is not one of its choices ({', '.join(map(str, self.choices))})"

    def suggest(self, trial: _Trial, name: str) -> Any:
        if len(self.choices) == 1:
            return self.choices[0]
        return trial.suggest_categorical(name, list(self.choices))

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


@dataclass(frozen=True)
class Fixed:
    """A value that is set, not searched (the plugin's declared default, or a study's choice)."""

    value: Any
    help: str = ""

    @property
    def default(self) -> Any:
        return self.value

    def default_problem(self) -> str | None:
        return None

    def suggest(self, trial: _Trial, name: str) -> Any:
        return self.value

    def describe(self) -> str:
        return f"fixed {self.value!r}"


@dataclass(frozen=True)
class Required:
    """A setting the study must give (e.g. the timm model name of the ``timm`` backbone family)."""

    kind: type = str
    help: str = ""

    @property
    def default(self) -> Any:
        return None

    def default_problem(self) -> str | None:
        return None

    def suggest(self, trial: _Trial, name: str) -> Any:  # pragma: no cover - resolved before sampling
        raise ConfigError(f"hyperparameter {name!r} needs a value in the study")

    def describe(self) -> str:
        return f"required {self.kind.__name__}"


Hyperparameter = Float | Int | Categorical | Fixed | Required


@dataclass(frozen=True)
class SearchSpace:
    """A plugin's hyperparameters after the study narrowed them: name → hyperparameter."""

    params: Mapping[str, Hyperparameter] = field(default_factory=dict)

    def sample(self, trial: _Trial, prefix: str) -> dict[str, Any]:
        """Suggest every hyperparameter under ``prefix.name`` and return name → value."""
        return {name: hp.suggest(trial, f"{prefix}.{name}") for name, hp in self.params.items()}

    def defaults(self) -> dict[str, Any]:
        return {name: hp.default for name, hp in self.params.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def narrow(declared: Hyperparameter, value: Any, *, where: str) -> Hyperparameter:
    """The hyperparameter a study's ``value`` makes of a plugin's ``declared`` one.

    Raises :class:`ConfigError` naming ``where`` (the field in the study) when the value does not fit.
    """
    if isinstance(value, Mapping):
        unknown = set(value) - {"low", "high", "log", "step"}
        if unknown or not {"low", "high"} <= set(value):
            raise ConfigError(
                f"{where}: a range needs the keys low and high (optional: log, step), got {dict(value)!r}"
            )
        low, high = value["low"], value["high"]
        if not (_is_number(low) and _is_number(high)):
            raise ConfigError(f"{where}: low and high must be numbers, got low={low!r}, high={high!r}")
        if isinstance(declared, Int) or (isinstance(declared, Required) and declared.kind is int):
            if not (float(low).is_integer() and float(high).is_integer()):
                raise ConfigError(
                    f"{where}: this hyperparameter is an integer; got low={low!r}, high={high!r}"
                )
            try:
                declared_step = declared.step if isinstance(declared, Int) else 1
                declared_log = isinstance(declared, Int) and declared.log and "step" not in value
                narrowed_int = Int(
                    int(low),
                    int(high),
                    step=int(value.get("step", declared_step)),
                    log=bool(value.get("log", declared_log)),
                )
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            _check_within(declared, narrowed_int, where=where)
            return narrowed_int
        if isinstance(declared, Float) or (isinstance(declared, Required) and declared.kind is float):
            if "step" in value:
                raise ConfigError(f"{where}: step only fits an integer hyperparameter; this one is a float")
            try:
                log = bool(value.get("log", declared.log if isinstance(declared, Float) else False))
                narrowed = Float(float(low), float(high), log=log)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            _check_within(declared, narrowed, where=where)
            return narrowed
        raise ConfigError(
            f"{where}: a range {{low, high}} only fits a numeric hyperparameter; this one is {declared.describe()}"
        )
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ConfigError(f"{where}: an empty list leaves nothing to choose")
    for v in values:
        _check_value(declared, v, where=where)
    if len(values) == 1:
        return Fixed(values[0])
    return Categorical(tuple(values))


def _check_within(declared: Hyperparameter, narrowed: Float | Int, *, where: str) -> None:
    """A study's range must lie inside the declared one: studies narrow a plugin's space, never widen it
    (the declared range is where the plugin author says the values work)."""
    if not isinstance(declared, (Float, Int)):
        return  # a Required number has no declared range
    if narrowed.low < declared.low or narrowed.high > declared.high:
        raise ConfigError(
            f"{where}: the range [{narrowed.low:g}, {narrowed.high:g}] widens the declared "
            f"{declared.describe()}; a study may only narrow it (low >= {declared.low:g}, high <= {declared.high:g})"
        )


def _check_value(declared: Hyperparameter, v: Any, *, where: str) -> None:
    if isinstance(declared, Float):
        if not _is_number(v) or not math.isfinite(float(v)):
            raise ConfigError(f"{where}: expected a number, got {v!r}; valid: {declared.describe()}")
        if not declared.contains(v):
            raise ConfigError(
                f"{where}: {v!r} is outside the declared range; valid: {declared.describe()} (a study may only narrow it)"
            )
    elif isinstance(declared, Int):
        if not _is_number(v) or not float(v).is_integer():
            raise ConfigError(f"{where}: expected an integer, got {v!r}; valid: {declared.describe()}")
        if not declared.contains(v):
            raise ConfigError(
                f"{where}: {v!r} is outside the declared range; valid: {declared.describe()} (a study may only narrow it)"
            )
    elif isinstance(declared, Categorical):
        if v not in declared.choices:
            raise ConfigError(
                f"{where}: {v!r} is not a valid choice; valid choices: {', '.join(map(str, declared.choices))}"
            )
    elif isinstance(declared, Required):
        if not isinstance(v, declared.kind) and not (declared.kind is float and _is_number(v)):
            raise ConfigError(f"{where}: expected a {declared.kind.__name__}, got {v!r}")
    elif isinstance(declared, Fixed):
        if (
            declared.value is not None
            and type(v) is not type(declared.value)
            and not (_is_number(v) and _is_number(declared.value))
        ):
            raise ConfigError(f"{where}: expected a {type(declared.value).__name__}, got {v!r}")
