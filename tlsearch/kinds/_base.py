"""What every plugin of every kind has: a name, a docstring, and declared hyperparameters."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tlsearch.space import Hyperparameter

if TYPE_CHECKING:
    from tlsearch.kinds.portfolio import PortfolioEntry

RESERVED_PARAMS = frozenset({"enabled"})
TASKS = ("classification", "regression", "multilabel")


class Plugin:
    """Base of the four plugin kinds.

    A plugin is a class. ``name`` is how studies refer to it; ``hyperparameters`` declares what the
    search may tune, with ranges that work (a study may narrow them). For each trial the search
    samples the hyperparameters and instantiates the class with them as keyword arguments, so
    ``FreezeStages(n_frozen=2)`` is also how a test or a script uses a plugin directly.

    Every declared default must lie inside its own range (checked at registration), and the plugin
    must accept every value of its declared space: when a study is read, each plugin is
    instantiated at the corners of the study's narrowed space (all lows, all highs, each choice),
    so an ``__init__`` that refuses a combination fails the study before any work.

    The class docstring is the plugin's documentation (``tlsearch plugins list`` shows its first
    line): say what it does and cite where it comes from.
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    hyperparameters: ClassVar[Mapping[str, Hyperparameter]] = {}
    #: the study tasks the plugin fits; a study of another task that lists it is a config error
    #: (e.g. label smoothing does nothing for regression, so it declares ``("classification",)``)
    tasks: ClassVar[tuple[str, ...]] = TASKS
    #: in the study's space when the study's file leaves that section (``head``, ``freezing``) out
    default: ClassVar[bool] = False
    #: the configurations the plugin recommends as a study's first trials (the warm start); what an
    #: entry means for each kind: :mod:`tlsearch.kinds.portfolio`
    portfolio: ClassVar[tuple[PortfolioEntry, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        from tlsearch.kinds.portfolio import check_portfolio

        check_portfolio(cls)

    def __init__(self, **params: Any) -> None:
        declared = type(self).hyperparameters
        unknown = set(params) - set(declared)
        if unknown:
            raise TypeError(
                f"{self.kind} {self.name!r} got unknown hyperparameter(s) {sorted(unknown)}; "
                f"declared: {sorted(declared) or '(none)'}"
            )
        values = {k: hp.default for k, hp in declared.items()}
        values.update(params)
        missing = [k for k, v in values.items() if v is None and type(declared[k]).__name__ == "Required"]
        if missing:
            raise TypeError(f"{self.kind} {self.name!r} needs a value for {missing}")
        self.params: dict[str, Any] = values
        for key, value in values.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    @classmethod
    def expand_overrides(cls, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The study's hyperparameter overrides for this plugin, with any shorthand made explicit.

        Called when a study is read, before its values are checked against :attr:`hyperparameters`
        (e.g. the ``timm`` backbone turns ``model: "resnet*"`` into the list of matching names).
        Default: unchanged.
        """
        return dict(overrides)

    @classmethod
    def check_space(
        cls, space: Mapping[str, Hyperparameter], *, study_dir: Path | None
    ) -> dict[str, Hyperparameter]:
        """Check this plugin's hyperparameters, as the study narrowed them, once before any trial.

        For what the declared ranges cannot say and would otherwise fail every trial the same way:
        a file that must exist and load, a reference that must import. Relative paths are meant
        from the study file's folder ``study_dir`` (None for a study given as a mapping): return
        the space with them made absolute. Raise :class:`~tlsearch.errors.PluginError` to refuse
        (the study then stops with a config error, exit 2). Default: unchanged.
        """
        return dict(space)

    @classmethod
    def check_available(cls, space: Mapping[str, Hyperparameter]) -> None:
        """Check, once before the first trial of a run (after :meth:`check_space`), that what the
        trials will fetch is there: weights to download from a hub that answers, or in the local
        cache. Raise :class:`~tlsearch.errors.PluginError` to stop the study (exit 2) instead of
        failing each trial after its retries. Not called by commands that run no trial
        (``export``, ``status``), which work offline. Default: nothing to check."""

    @classmethod
    def summary(cls) -> str:
        """First line of the docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""
