"""Opening a study to look at: from its folder (``runs/<name>``) or from an Optuna storage.

Reading never changes the study: it is loaded, not created, and nothing is written to the storage.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from tlsearch.errors import ConfigError

#: what a study file is called (``tlsearch status study.yaml``), as opposed to a journal file
STUDY_FILE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class StudySource:
    """A loaded study and what its folder says about it (``folder`` and ``budget`` are None for a
    bare storage: the budget lives in the folder's ``study.json``). ``storage`` is the storage's
    URL or path with any password hidden."""

    study: optuna.Study
    storage: str
    folder: Path | None
    budget: int | None
    metric: str

    @property
    def maximize(self) -> bool:
        return self.study.directions[0] == optuna.study.StudyDirection.MAXIMIZE  # the metric's, in any study


def open_source(
    source: str | Path,
    *,
    study_name: str | None = None,
    storage: str | None = None,
    out_dir: str | Path | None = None,
    artifacts: str | None = None,
) -> StudySource:
    """Load the study in ``source``: a study folder, a study file (``study.yaml``: its folder is
    ``out_dir``, default ``runs/<name>``, as ``tlsearch run`` makes it), or a storage (a database URL such as
    ``sqlite:///study.db`` or ``postgresql://…``, or a journal file ``study.journal``); then
    ``study_name`` picks the study, and may be left out when the storage holds exactly one.

    ``storage`` overrides the folder's storage (a study folder whose trials live in PostgreSQL).
    With ``artifacts`` (an artefact store URL, ``--artifacts``) the folder may be empty or missing:
    its ``study.json`` is fetched from the store first (the study seen from another machine).
    """
    from tlsearch.search import open_study
    from tlsearch.search.storage import make_storage, redact
    from tlsearch.search.study_dir import open_folder

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(source)
    if folder.is_file() and folder.suffix.lower() in STUDY_FILE_SUFFIXES:
        folder = study_folder(folder, out_dir=out_dir)
    elif out_dir is not None:
        raise ConfigError(f"--out is for a study file (STUDY.yaml), not for {str(source)!r}")
    if artifacts is not None and not folder.is_dir():
        if "://" in str(source) or str(source).endswith((".journal", ".log")):
            raise ConfigError(
                f"with --artifacts, the source is the folder on this machine to fetch the study into "
                f"(e.g. runs/NAME, made if missing) and --storage the study's storage, not {redact(str(source))!r}"
            )
    elif not folder.is_dir():
        spec = str(source)
        try:
            backend = make_storage(spec, heartbeat_interval=None, grace_period=None)
        except ConfigError as exc:
            raise ConfigError(f"{spec!r} is neither a study folder nor a storage ({exc})") from None
        if "://" not in spec and not Path(spec.removeprefix("journal:")).is_file():
            raise ConfigError(f"{spec!r} is neither a study folder nor an existing journal file")
        names = [s.study_name for s in optuna.get_all_study_summaries(backend)]
        name = study_name or _only_study(redact(spec), names)
        if name not in names:
            raise ConfigError(
                f"no study {name!r} in {redact(spec)}; studies there: {', '.join(names) or 'none'}"
            )
        study = optuna.load_study(study_name=name, storage=backend)
        metric = str(study.user_attrs.get("metric") or (study.metric_names or ["value"])[0])
        return StudySource(study, redact(spec), None, None, metric)

    study_dir, config = open_folder(folder, artifacts)
    spec = study_dir.storage(config, storage)
    if study_name is not None and study_name != config.name:
        raise ConfigError(f"study folder {str(folder)!r} holds study {config.name!r}, not {study_name!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the sampler's options
        study = open_study(config, spec, create=False)
    return StudySource(study, redact(spec), folder, config.search.n_trials, config.metric)


def study_folder(study_file: Path, *, out_dir: str | Path | None = None) -> Path:
    """The folder ``tlsearch run STUDY_FILE [--out DIR]`` keeps the study in; it must exist."""
    from tlsearch.config import load_config

    config = load_config(study_file)
    folder = Path(out_dir) if out_dir is not None else Path("runs") / config.name
    if not folder.is_dir():
        raise ConfigError(
            f"study {config.name!r} ({study_file}) has no folder {str(folder)!r} yet: run "
            f"`tlsearch run {study_file}` first, or give the folder it ran in with --out"
        )
    return folder


def _only_study(where: str, names: list[str]) -> str:
    if len(names) != 1:
        raise ConfigError(
            f"{where} holds {len(names)} studies ({', '.join(names) or 'none'}); choose one with --study NAME"
        )
    return names[0]


def trial_seconds(trial: optuna.trial.FrozenTrial) -> float | None:
    """Wall time of a trial: its own ``seconds`` attribute when complete, else from its timestamps."""
    seconds = trial.user_attrs.get("seconds")
    if isinstance(seconds, (int, float)):
        return float(seconds)
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def plugin_labels(choices: dict[str, Any]) -> dict[str, str]:
    """The plugin of each kind a trial used, as a short label per kind:
    ``{"backbone": "timm(resnet18)", "head": "linear", "freezing": "lp_ft", "regularizers": "mixup+l2sp"}``."""
    backbone = str(choices.get("backbone", "?"))
    model = choices.get(f"backbone.{backbone}.model")
    regs = sorted(
        k.split(".", 1)[1]
        for k, v in choices.items()
        if k.startswith("regularizer.") and k.count(".") == 1 and v
    )
    return {
        "backbone": f"{backbone}({model})" if model else backbone,
        "head": str(choices.get("head", "?")),
        "freezing": str(choices.get("freezing", "?")),
        "regularizers": "+".join(regs) or "none",
    }
