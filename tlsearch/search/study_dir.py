"""The study folder: everything one study writes, in one place that a rerun resumes from.

::

    runs/<name>/
        study.json          the validated study config (and where it came from)
        study.journal       the Optuna storage of an embedded run (journal file; see search/storage.py)
        study.db            the same in a folder made by an older tlsearch (SQLite, one process)
        trail.jsonl         one JSON line per study/trial/epoch event
        cache/              decoded images and backbone features, shared by all trials
        logs/               worker-<rank>.log: what each local worker of `run --workers N` printed
        trials/<n>/         model.safetensors + trial.json for trial n
        model.onnx          the exported best model (+ model.json)

With an artefact store (the study's ``artifacts:``, ``--artifacts``; :mod:`tlsearch.artifacts`),
``study.json``, ``trials/``, the trail and the exported model are copied there under the same
names, and a machine with an empty folder fetches them from it on demand; ``cache/`` and ``logs/``
stay on each machine.
"""

from __future__ import annotations

import hashlib
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlsearch.artifacts import Artifacts, open_artifacts
from tlsearch.config import StudyConfig, parse_config
from tlsearch.errors import ConfigError, short_repr
from tlsearch.files import atomic_file

#: a trial's files, in the order they are shared: the record last, as the sign the weights are whole
CHECKPOINT_FILES = ("model.safetensors", "trial.json")
TRAIL_FILE = "trail.jsonl"


@dataclass(frozen=True)
class StudyDir:
    """The study folder ``root``, and the artefact store ``artifacts`` when the study shares its
    files through one (None: the folder is the store, as it always was)."""

    root: Path
    artifacts: Artifacts | None = field(default=None, compare=False)

    @classmethod
    def of(cls, root: Path, config: StudyConfig | None, override: str | None = None) -> StudyDir:
        """The folder ``root`` with the store of ``override`` (``--artifacts``) or of the study's
        ``artifacts:`` (a relative path from the study file); a malformed URL is a ConfigError."""
        if override:
            return cls(root, open_artifacts(override, where="--artifacts"))
        if config is not None and config.artifacts:
            base = config.source.parent if config.source else None
            return cls(
                root,
                open_artifacts(config.artifacts, base=base, where=f"{config.source or '<study>'}: artifacts"),
            )
        return cls(root)

    @property
    def shares(self) -> bool:
        """Whether files are copied to a store other than this folder."""
        return self.artifacts is not None and not self.artifacts.location.same_folder(self.root)

    def probe_artifacts(self) -> None:
        """Check that the store answers and takes writes, before any work (exit 2 naming it)."""
        if self.artifacts is not None:
            self.artifacts.probe()

    def share(self, *names: str) -> None:
        """Upload the folder's files ``names`` (paths relative to it), in this order."""
        if self.shares:
            assert self.artifacts is not None
            for name in names:
                self.artifacts.upload(name, self.root / name)

    def fetch(self, name: str) -> bool:
        """Download ``name`` from the store into the folder; False when the store lacks it (or
        there is no other store)."""
        if not self.shares:
            return False
        assert self.artifacts is not None
        return self.artifacts.download(name, self.root / name)

    def fetch_config(self) -> None:
        """A machine with an empty folder gets ``study.json`` from the store (when there is one)."""
        if self.config_file.is_file() or not self.shares:
            return
        if not self.fetch(self.config_file.name):
            assert self.artifacts is not None
            raise ConfigError(
                f"artifact store {self.artifacts.url} has no study.json ({self.artifacts.where('study.json')}): "
                "no study ran with these artefacts yet, or the URL names another prefix"
            )

    def share_checkpoint(self, number: int) -> None:
        """Upload trial ``number``'s weights, then its ``trial.json``: a reader that finds the
        record finds whole weights."""
        folder = self.trial_dir(number).relative_to(self.root)
        self.share(*(f"{folder.as_posix()}/{name}" for name in CHECKPOINT_FILES))

    def checkpoint(self, number: int) -> Path:
        """The folder of trial ``number``'s checkpoint on this machine: downloaded from the store
        when it is not here (the record checked first, then the weights, then the record)."""
        folder = self.trial_dir(number)
        if self.shares and not (folder / CHECKPOINT_FILES[-1]).is_file():
            assert self.artifacts is not None
            names = [f"{folder.relative_to(self.root).as_posix()}/{name}" for name in CHECKPOINT_FILES]
            if self.artifacts.exists(names[-1]):
                for name in names:
                    self.artifacts.download(name, self.root / name)
        return folder

    def share_trail(self) -> None:
        """Upload this folder's trail as ``trails/<host>-<folder id>.jsonl`` (one per folder)."""
        if self.shares and (self.root / TRAIL_FILE).is_file():
            assert self.artifacts is not None
            folder_id = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:8]
            name = f"trails/{socket.gethostname()}-{folder_id}.jsonl"
            self.artifacts.upload(name, self.root / TRAIL_FILE)

    def share_export(self, model: Path) -> None:
        """Upload an exported model, then its ``.json`` (the sign it is whole): under its name in
        the folder, or at the top of the store when it was written elsewhere."""
        if not self.shares:
            return
        assert self.artifacts is not None
        for path in (model, model.with_suffix(".json")):
            try:
                name = path.resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                name = path.name
            if path.is_file():
                self.artifacts.upload(name, path)

    @property
    def config_file(self) -> Path:
        return self.root / "study.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def default_storage(self) -> str:
        """The journal file ``study.journal``, safe for several local processes; a folder that an
        older tlsearch made with ``study.db`` keeps its SQLite storage."""
        legacy = self.root / "study.db"
        if legacy.is_file():
            return f"sqlite:///{legacy.resolve()}"
        return str((self.root / "study.journal").resolve())

    def trial_dir(self, number: int) -> Path:
        return self.root / "trials" / f"{number:04d}"

    def save_config(self, config: StudyConfig) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        payload = {
            "source": str(config.source) if config.source else None,
            "config": config.model_dump(mode="json", exclude={"source"}),
        }
        write_json_atomic(self.config_file, payload)
        self.share(self.config_file.name)

    def load_config(self) -> StudyConfig:
        if not self.config_file.is_file():
            raise ConfigError(
                f"{str(self.root)!r} is not a tlsearch study folder (no study.json); run `tlsearch run` first"
            )
        try:
            payload = json.loads(self.config_file.read_text(encoding="utf-8"))
            config, source = payload["config"], payload.get("source")
            if not isinstance(config, dict) or not isinstance(source, (str, type(None))):
                raise TypeError("config must be a mapping and source a path")
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise ConfigError(
                f"{self.config_file}: not a study.json that tlsearch wrote ({type(exc).__name__}: "
                f"{short_repr(str(exc))}); rerun `tlsearch run` with the study file to rewrite it"
            ) from None
        return parse_config(config, source=str(self.config_file), path=Path(source) if source else None)

    def storage(self, config: StudyConfig, override: str | None = None) -> str:
        """The storage of the study: ``override`` (``--storage``), the study's ``storage:``, or the
        folder's default; a malformed URL or a driver that is not installed is a :class:`ConfigError`
        naming where the storage came from (checked without connecting, so before anything is written)."""
        if override:
            check_storage(override, where="--storage")
            return override
        if config.storage:
            check_storage(config.storage, where=f"{config.source or '<study>'}: storage")
            return self.journal_inside(config.storage)
        return self.default_storage

    def journal_inside(self, spec: str) -> str:
        """A relative journal file of the study's ``storage:`` lives in the study folder, as every
        other output of the study does (``--storage`` paths stay relative to the working folder)."""
        from tlsearch.search.storage import storage_kind

        if storage_kind(spec) != "journal":
            return spec
        path = Path(spec.removeprefix("journal:")).expanduser()
        return spec if path.is_absolute() else str((self.root / path).resolve())


def check_storage(spec: str, *, where: str) -> None:
    """Refuse a storage that cannot work, without connecting and without writing anything: an
    unknown scheme, a database URL that does not parse, a SQLAlchemy dialect or driver that is not
    installed. Whether the server answers is known only when the study is opened, which
    :func:`tlsearch.search.run_study` does before it writes ``study.json``."""
    from tlsearch.search.storage import redact, storage_kind, with_available_driver

    shown = short_repr(redact(spec))  # no password, and not megabytes, in a message
    try:
        kind = storage_kind(spec)
    except ConfigError:
        raise ConfigError(
            f"{where}: storage {shown} is not valid; valid forms: postgresql://user@host/db (or another "
            "SQLAlchemy URL: mysql://…, sqlite:///file.db), grpc://host:port (a tlsearch storage-proxy), or a "
            "journal file path ending in .journal or .log"
        ) from None
    if kind == "journal":
        return
    if kind == "grpc":
        from tlsearch.search.storage import grpc_address

        try:
            grpc_address(spec)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        url = sqlalchemy.engine.make_url(with_available_driver(spec))
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise ConfigError(f"{where}: storage {shown} is not a valid database URL: {exc}") from None
    try:
        dialect = url.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise ConfigError(
            f"{where}: storage {shown}: SQLAlchemy knows no database driver {url.drivername!r}; "
            "valid forms: postgresql://user@host/db, mysql://…, sqlite:///file.db"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise ConfigError(
            f"{where}: storage {shown} needs a database driver that is not installed: {exc}"
        ) from None


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place; a failed write
    (a full disk) is a :class:`~tlsearch.errors.WriteError` naming ``path`` (see :mod:`tlsearch.files`)."""
    with atomic_file(path) as f:
        json.dump(payload, f, indent=2, default=str)


def open_folder(root: Path, artifacts: str | None = None) -> tuple[StudyDir, StudyConfig]:
    """The study folder ``root`` and its config, for a command that reads a study that ran
    (export, status, report): with ``artifacts`` (``--artifacts``), an empty or missing folder first
    gets ``study.json`` from that store, so any machine that reaches the storage and the store can
    work on the study; the folder's store is then ``artifacts``, else the study's ``artifacts:``."""
    bare = StudyDir.of(root, None, artifacts)
    bare.fetch_config()
    config = bare.load_config()
    return StudyDir.of(root, config, artifacts), config
