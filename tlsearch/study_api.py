"""The Python API: one :class:`Study` owns a study's life; every ``tlsearch`` command is a few lines over it.

    import tlsearch

    study = tlsearch.Study.from_yaml("study.yaml", out="runs/flowers")
    result = study.run(workers=2)          # search, then export the best model (export.enabled, INT8)
    print(study.status()["best"])          # what `tlsearch status --json` prints
    study.report(png=True)                 # report.html beside the study
    ranking = study.rank()                 # `tlsearch rank`: backbones by transferability

:class:`Worker` is one process taking part in a study someone else started (``tlsearch worker``);
:class:`~tlsearch.worker_settings.WorkerSettings` groups how it runs (heartbeat, grace period,
failures in a row). This module imports neither torch nor optuna until a method needs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlsearch.errors import ConfigError, UsageError
from tlsearch.worker_settings import WorkerSettings

if TYPE_CHECKING:
    from tlsearch.config import StudyConfig
    from tlsearch.registry import PluginManager
    from tlsearch.report import ReportFiles, StudySource
    from tlsearch.search import RunResult

__all__ = ["BackboneRanking", "BestExport", "Study", "Worker", "WorkerSettings"]

EventHandler = Callable[..., None]


def worker_study_is_folder(study: Path, *, artifacts: str | None) -> bool:
    """Whether a worker's STUDY argument (``tlsearch worker``, ``python -m tlsearch.worker_process``)
    is a study folder (:meth:`Study.from_dir`) rather than a study file (:meth:`Study.from_yaml`):
    an existing folder, or a missing path with ``artifacts``, the folder then fetched from that
    store. A missing path without a store is a :class:`~tlsearch.errors.UsageError` (exit 2)."""
    if not study.exists() and artifacts is None:
        raise UsageError(
            f"{str(study)!r} does not exist (a study folder may be missing only with --artifacts, "
            "which it is then fetched from)"
        )
    return study.is_dir() or not study.exists()


@dataclass
class BestExport:
    """What exporting a study's best trial did: ``current`` is the exported model when it already was
    the best trial's (nothing was exported again); else ``report`` is the ONNX export's and
    ``quantized`` the INT8 copy's (when the study asks for one: ``export.int8`` on a classifier)."""

    current: Path | None = None
    report: Any = None
    quantized: Any = None


@dataclass
class BackboneRanking:
    """The study's backbones ranked by a zero-cost transferability ``score`` (``logme``/``hscore``)."""

    score: str
    results: list[Any] = field(default_factory=list)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.results]


class Study:
    """A study: its config, its folder (checkpoints, caches, exported model) and its Optuna storage.

    Open one with :meth:`from_yaml` (a study file, to run it), :meth:`from_dir` (a study folder
    that ran) or :meth:`open` (whatever ``tlsearch status`` takes: a folder, a study file or a
    storage URL). Methods that only read the study (:meth:`status`, :meth:`report`, :meth:`watch`)
    work on a bare storage URL too; the others need the config.

    ``artifacts`` (an artefact store URL: ``s3://bucket/prefix``, ``gs://…``, a folder; see
    :mod:`tlsearch.artifacts`) overrides the study's ``artifacts:``: where checkpoints,
    ``study.json``, the trail and the exported model are shared. With it (and the storage URL), a
    study folder on this machine may start empty: what it needs is fetched from the store.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        config: StudyConfig | None = None,
        out: str | Path | None = None,
        storage: str | None = None,
        study_name: str | None = None,
        plugin_files: Sequence[str | Path] = (),
        artifacts: str | None = None,
    ) -> None:
        self.source = str(source)
        self.artifacts = artifacts
        self._config = config
        self.out = Path(out) if out is not None else None
        self.storage = storage
        self.study_name = study_name
        self.plugin_files = tuple(plugin_files)

    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        *,
        out: str | Path | None = None,
        storage: str | None = None,
        plugin_files: Sequence[str | Path] = (),
        overrides: dict[str, Any] | None = None,
        artifacts: str | None = None,
    ) -> Study:
        """The study defined in the YAML file ``path``, kept in ``out`` (default: ``runs/<name>``).

        ``storage`` is an Optuna storage URL or journal file (default: ``study.journal`` in the
        folder); ``plugin_files`` are extra plugin files; ``overrides`` dotted config keys
        (``{"training.epochs": 1}``)."""
        from tlsearch.config import load_config

        config = load_config(path, overrides=overrides)
        return cls(
            path, config=config, out=out, storage=storage, plugin_files=plugin_files, artifacts=artifacts
        )

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        *,
        out: str | Path | None = None,
        storage: str | None = None,
        plugin_files: Sequence[str | Path] = (),
        artifacts: str | None = None,
    ) -> Study:
        """The study in the folder ``path`` that ``run`` made (its config is the folder's
        ``study.json``); ``out``: another folder for this machine's checkpoints and caches.
        With ``artifacts``, ``path`` may be empty or missing: ``study.json`` comes from the store."""
        folder = Path(path)
        return cls(
            folder,
            out=out if out is not None else folder,
            storage=storage,
            plugin_files=plugin_files,
            artifacts=artifacts,
        )

    @classmethod
    def open(
        cls,
        source: str | Path,
        *,
        study_name: str | None = None,
        storage: str | None = None,
        out: str | Path | None = None,
        artifacts: str | None = None,
    ) -> Study:
        """A study to read: a study folder, the study file it ran from (with ``out``, the folder it
        ran in), or a storage URL/journal file (with ``study_name`` when it holds several); with
        ``artifacts``, a folder to fetch the study into from that store (see :class:`Study`)."""
        return cls(source, out=out, storage=storage, study_name=study_name, artifacts=artifacts)

    # -- what it is -----------------------------------------------------------------------------

    @property
    def config(self) -> StudyConfig:
        """The study's config (a bare storage has none: :class:`~tlsearch.errors.ConfigError`)."""
        if self._config is None:
            from tlsearch.config import load_config
            from tlsearch.report._source import STUDY_FILE_SUFFIXES
            from tlsearch.search.study_dir import open_folder

            path = Path(self.source)
            if path.is_file() and path.suffix.lower() in STUDY_FILE_SUFFIXES:
                self._config = load_config(path)
            elif path.is_dir() or (self.artifacts is not None and "://" not in self.source):
                self._config = open_folder(path, self.artifacts)[1]  # fetched from the store if need be
            else:
                raise ConfigError(
                    f"{self.source!r} is a storage, not a study file or folder: it has no config "
                    "(open the study with Study.from_yaml or Study.from_dir)"
                )
        return self._config

    @property
    def root(self) -> Path:
        """The study folder: ``out``, a folder it was opened from, or ``runs/<name>``."""
        if self.out is not None:
            return self.out
        if self.artifacts is not None:
            self.config  # noqa: B018 (with an artefact store, this fetches study.json into the folder)
        if Path(self.source).is_dir():
            return Path(self.source)
        return Path("runs") / self.config.name

    @property
    def wants_int8(self) -> bool:
        """The study asks for an INT8 copy of its exported model (``export.int8``, classification)."""
        return self.config.export.int8 and self.config.task == "classification"

    # -- running it -----------------------------------------------------------------------------

    def run(
        self,
        *,
        workers: int = 1,
        settings: WorkerSettings | None = None,
        n_trials: int | None = None,
        timeout: float | None = None,
        on_event: EventHandler | None = None,
        progress: bool = True,
        export: bool = True,
        force_export: bool = False,
    ) -> RunResult:
        """Run (or resume) the search until its budget of finished trials, as ``tlsearch run`` does;
        then, when the study has a complete trial, ``export.enabled`` and ``export`` is true,
        export the best trial (and its INT8 copy, see :meth:`export_best`) into ``result.exported``.

        ``workers`` > 1 runs that many local worker processes (``settings.workers`` when
        ``settings`` is given and ``workers`` left at 1); 0 is :meth:`create`. See
        :func:`tlsearch.search.run_study` for ``n_trials``, ``timeout``, ``on_event`` and the
        resume rules."""
        from tlsearch.search import run_study

        settings = settings or WorkerSettings()
        if workers != 1:
            settings = dataclasses.replace(settings, workers=workers)
        result = run_study(
            self.config,
            out_dir=self.out,
            n_trials=n_trials,
            timeout=timeout,
            storage=self.storage,
            plugin_files=self.plugin_files,
            progress=progress,
            on_event=on_event,
            settings=settings,
            artifacts=self.artifacts,
        )
        self._config = result.config  # with the plugin files prepare() added
        if settings.workers == 0:
            return result
        if export and result.config.export.enabled and result.problem() is None:
            result.exported = self.export_best(force=force_export, pm=result.pm)
        return result

    def create(self, *, n_trials: int | None = None, timeout: float | None = None) -> RunResult:
        """Create the study and run no trial (``tlsearch run --workers 0``): validate it, check its
        images, create it in the storage with its deadline, ranking and warm start, for
        :class:`Worker` processes started elsewhere to run (the creator step of a cluster launch,
        see ``docs/distributed.md``)."""
        return self.run(workers=0, n_trials=n_trials, timeout=timeout, progress=False)

    def worker(self, settings: WorkerSettings | None = None) -> Worker:
        """A worker that joins this study (started elsewhere) through its storage."""
        return Worker(self, settings=settings)

    # -- its model ------------------------------------------------------------------------------

    def exported_best(self) -> Path | None:
        """The exported model when it already is the best trial's (with its INT8 copy when the
        study wants one); None when exporting again is worth it."""
        from tlsearch.search.best import exported_from_best

        current = exported_from_best(self.root, storage=self.storage, artifacts=self.artifacts)
        if current is None or (
            self.wants_int8 and not current.with_name(f"{current.stem}.int8.onnx").is_file()
        ):
            return None
        return current

    def export_best(self, *, force: bool = False, pm: PluginManager | None = None) -> BestExport:
        """Export the best trial unless its model already is (``force``: anyway), then its INT8
        copy when the study asks for one: what ``tlsearch run`` does after the search."""
        current = None if force else self.exported_best()
        if current is not None:
            return BestExport(current=current)
        report = self.export(pm=pm)
        quantized = self.quantize(model=report.path) if self.wants_int8 else None
        return BestExport(report=report, quantized=quantized)

    def export(
        self,
        *,
        trial: int | None = None,
        path: str | Path | None = None,
        raw_input: bool | None = None,
        pm: PluginManager | None = None,
    ) -> Any:
        """Export trial number ``trial`` (default: the best) to ONNX at ``path`` (default: the
        study's ``export.path``), checked against PyTorch; returns the export report."""
        from tlsearch.search import export_study

        return export_study(
            self.root,
            trial=trial,
            path=path,
            storage=self.storage,
            pm=pm,
            raw_input=raw_input,
            artifacts=self.artifacts,
        )

    def quantize(self, *, model: str | Path | None = None, on_drop: str | None = None) -> Any:
        """Write and measure an INT8 copy of the exported ``model`` (default: the study's); see
        :func:`tlsearch.search.quantize_study` for ``on_drop``."""
        from tlsearch.search import quantize_study

        return quantize_study(self.root, model=model, on_drop=on_drop, artifacts=self.artifacts)

    # -- before and after -----------------------------------------------------------------------

    def rank(
        self,
        *,
        score: str | None = None,
        max_images: int | None = None,
        on_candidate: Callable[[Any], None] | None = None,
    ) -> BackboneRanking:
        """Rank the study's backbones by the transferability of their frozen features (``score``:
        ``logme`` or ``hscore``, default the study's ``search.rank.score``, else ``logme``), with
        their cost; features land in the study folder's cache, so a run afterwards reuses them."""
        from tlsearch.data import load_splits
        from tlsearch.rank import rank_backbones
        from tlsearch.search import StudyData, prepare
        from tlsearch.train import resolve_device

        config, pm, space, study_dir = prepare(self.config, out_dir=self.out, plugin_files=self.plugin_files)
        settings = config.search.rank
        score = score or (settings.score if settings else "logme")
        if max_images is None and settings is not None:
            max_images = settings.max_images
        train, val = load_splits(
            config.data, task=config.task, seed=config.search.seed or 0, resolve=config.resolve_path
        )
        data = StudyData(
            train, val, cache_dir=study_dir.cache, on_bad_image=config.data.on_bad_image, progress=False
        )
        results = rank_backbones(
            space,
            registry=pm.registry,
            data=data,
            task=config.task,
            score=score,
            image_size=config.data.fixed_image_size,
            device=resolve_device(config.training.device),
            cache_dir=study_dir.cache,
            max_images=max_images,
            seed=config.search.seed or 0,
            precision=config.training.precision,
            all_scores=True,
            on_candidate=on_candidate,
        )
        return BackboneRanking(score, list(results))

    def load(self) -> StudySource:
        """The Optuna study with what its folder says about it (budget, metric)."""
        from tlsearch.report import open_source

        return open_source(
            self.source,
            study_name=self.study_name,
            storage=self.storage,
            out_dir=self.out,
            artifacts=self.artifacts,
        )

    def status(self, *, top: int = 5, source: StudySource | None = None) -> dict[str, Any]:
        """Where the study stands: what ``tlsearch status --json`` prints (``top``: trials in its
        leaderboard; ``source``: the study already loaded with :meth:`load`)."""
        from tlsearch.report import study_status

        return study_status(source or self.load(), top=top)

    def report(self, *, out: str | Path | None = None, png: bool = False) -> ReportFiles:
        """Write the HTML report (default: ``report.html`` in the study folder); ``png`` also saves
        each plot as a PNG."""
        from tlsearch.report import write_report

        return write_report(self.load(), out=out, png=png)

    def watch(self, on_event: EventHandler, *, source: StudySource | None = None) -> None:
        """Follow the study live until its budget is done, passing its trials' events to
        ``on_event`` as ``run`` does (from any machine that reaches its storage); ``source``: the
        study already loaded with :meth:`load`."""
        from tlsearch.search.watch import follow

        src = source or self.load()
        follow(src.study, on_event, budget=src.budget)


class Worker:
    """One worker of a study that runs elsewhere too: it joins through the storage, runs trials
    until the study's budget is done, and leaves the deadline and warm start to whoever started it
    (``tlsearch worker``; each local worker of ``Study.run(workers=N)`` is one)."""

    def __init__(self, study: Study, *, settings: WorkerSettings | None = None) -> None:
        self.study = study
        self.settings = dataclasses.replace(settings or WorkerSettings(), join=True, workers=1)

    def run(
        self,
        *,
        n_trials: int | None = None,
        timeout: float | None = None,
        on_event: EventHandler | None = None,
        progress: bool = False,
    ) -> RunResult:
        """Run trials until the budget is done (``timeout``: this worker's own limit, in seconds)."""
        from tlsearch.search import run_study

        study = self.study
        return run_study(
            study.config,
            out_dir=study.out,
            n_trials=n_trials,
            timeout=timeout,
            storage=study.storage,
            plugin_files=study.plugin_files,
            progress=progress,
            on_event=on_event,
            settings=self.settings,
            artifacts=study.artifacts,
        )
