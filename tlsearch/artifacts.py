"""Where a study's shared files live: its folder (the default), another folder, or an object store.

A study names its artefact store with ``artifacts:`` (or ``--artifacts URL``; the Python API's
``Study(..., artifacts=URL)``)::

    artifacts: s3://bucket/prefix     # Amazon S3 or any S3-compatible store (MinIO, Ceph, moto …)
    artifacts: gs://bucket/prefix     # Google Cloud Storage
    artifacts: /abs/path              # a folder (file:///abs/path too); relative: from the study file

Without it, the store is the study folder itself, laid out as it always was, and nothing is copied.
With it, what another machine needs goes there too, under the same names as in the folder:
``study.json``, ``trials/<n>/model.safetensors`` + ``trial.json``, ``trails/<host>-<id>.jsonl`` and
the exported ``model.onnx`` + ``model.json``; each worker keeps its decoded-image and feature caches
local. A worker then needs only the storage URL and the artefact URL, and ``tlsearch export``,
``status`` and ``report`` work from any machine that reaches both.

The stores are Optuna's (:mod:`optuna.artifacts`), with three changes: a folder is written to a
temporary file renamed into place (:mod:`tlsearch.files`), so a reader never sees half a file;
S3 uploads stream from the file (``avoid_buf_copy``) in bounded parts; GCS streams both ways
(Optuna's own reads and writes the whole object in memory). Which file of a pair is the reader's
sign that the pair is whole is the caller's choice: weights before ``trial.json``, ``model.onnx``
before ``model.json``. An object store makes an object visible only once its upload completes; an
S3 upload that fails with an exception (or a Ctrl-C) is aborted by s3transfer's failure cleanup,
so only a writer killed outright leaves an unfinished multipart upload, which no reader lists (a
bucket lifecycle rule removes it: docs/distributed.md).

Credentials never go in the URL: boto3 and google-cloud-storage take them from their usual places
(environment, config files, instance roles). A URL with ``user:pass@`` is refused, redacted.
This module imports neither torch nor optuna until a store is opened.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from tlsearch.errors import ConfigError, TlsearchError, short_repr
from tlsearch.files import atomic_file

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore as OptunaStore

#: the URL schemes of the object stores; anything else is a folder
OBJECT_SCHEMES = ("s3", "gs")
VALID_FORMS = "s3://bucket/prefix, gs://bucket/prefix, /abs/path, a path relative to the study file, or file:///abs/path"
#: S3 upload parts: a bounded window in memory whatever the file's size (boto3's default is 10 × 8 MB)
PART_BYTES = 8 * 1024 * 1024
PARTS_IN_FLIGHT = 4
PROBE_PREFIX = ".tlsearch-probe"


def redact_url(spec: str) -> str:
    """``spec`` with any ``user:pass@`` (or a lone key) and query string replaced by ``***``, for
    messages and logs: an artefact URL must never put a credential on screen."""
    if "://" not in spec:
        return spec
    scheme, rest = spec.split("://", 1)
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    path, question, _ = path.partition("?")
    return f"{scheme}://{authority}{slash}{path}{'?***' if question else ''}"


@dataclass(frozen=True)
class ArtifactLocation:
    """A parsed artefact URL: an object store's ``scheme``, ``bucket`` and key ``prefix``, or a
    folder ``path``. ``url`` is what the user wrote, redacted (:func:`redact_url`)."""

    url: str
    scheme: str  # "s3", "gs" or "file"
    bucket: str = ""
    prefix: str = ""
    path: Path | None = None

    @property
    def is_folder(self) -> bool:
        return self.scheme == "file"

    def same_folder(self, root: Path) -> bool:
        """Whether this store is the study folder ``root`` itself (nothing to copy)."""
        return self.path is not None and self.path.resolve() == root.resolve()


def parse_artifacts(spec: str, *, base: Path | None = None, where: str = "artifacts") -> ArtifactLocation:
    """Parse an artefact URL (see the module docstring); a relative path resolves from ``base``
    (the study file's folder). A bad one is a :class:`ConfigError` naming ``where`` it came from,
    the URL (redacted) and the valid forms; nothing is contacted."""
    shown = short_repr(redact_url(spec))
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{where}: artifact store {shown} is empty; valid forms: {VALID_FORMS}")
    if "://" not in spec:
        path = Path(spec).expanduser()
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        return ArtifactLocation(url=spec, scheme="file", path=path)
    scheme, rest = spec.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        if not rest.startswith("/"):
            raise ConfigError(
                f"{where}: artifact store {shown} is not valid: a file URL takes an absolute path "
                f"(file:///abs/path); valid forms: {VALID_FORMS}"
            )
        return ArtifactLocation(url=spec, scheme="file", path=Path(rest))
    if scheme not in OBJECT_SCHEMES:
        raise ConfigError(
            f"{where}: artifact store {shown} has an unknown scheme {scheme!r}; valid forms: {VALID_FORMS}"
        )
    authority, _, prefix = rest.partition("/")
    if "@" in authority or "?" in spec:
        raise ConfigError(
            f"{where}: artifact store {shown} carries credentials or options in the URL, which would end up "
            "in logs; give only the bucket and prefix, and the credentials as the client library expects "
            "them (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, GOOGLE_APPLICATION_CREDENTIALS, a role)"
        )
    if not authority:
        raise ConfigError(f"{where}: artifact store {shown} names no bucket; valid forms: {VALID_FORMS}")
    return ArtifactLocation(url=spec, scheme=scheme, bucket=authority, prefix=prefix.strip("/"))


class ArtifactError(TlsearchError):
    """Reading or writing the artefact store failed (the message names the object, redacted). Before
    a study starts the probe turns it into a :class:`ConfigError` (exit 2); during a trial it fails
    the trial, whose files stay on the worker's disk."""


class FolderStore:
    """Optuna's :class:`~optuna.artifacts.FileSystemArtifactStore` whose writes are whole or
    nothing (a temporary file beside the target, renamed over it) and that makes the folders it
    needs: a reader never opens a half-written artefact."""

    def __init__(self, base_path: Path) -> None:
        from optuna.artifacts import FileSystemArtifactStore

        self._inner = FileSystemArtifactStore(base_path)
        self.base_path = base_path

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._inner.open_reader(artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        target = self._inner._get_filepath(artifact_id)  # Optuna's check that the key stays inside
        with atomic_file(target, binary=True) as f:
            shutil.copyfileobj(content_body, f, PART_BYTES)

    def remove(self, artifact_id: str) -> None:
        self._inner.remove(artifact_id)


def _boto3_store(bucket: str) -> OptunaStore:
    from optuna.artifacts import Boto3ArtifactStore

    try:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config
    except ImportError:
        raise ConfigError(
            "an s3:// artifact store needs boto3, which is not installed: pip install 'tlsearch[s3]'"
        ) from None

    class StreamingBoto3Store(Boto3ArtifactStore):
        """Optuna's S3 store, uploading straight from the file in a bounded window of parts."""

        def write(self, artifact_id: str, content_body: BinaryIO) -> None:
            transfer = TransferConfig(
                multipart_chunksize=PART_BYTES, max_concurrency=PARTS_IN_FLIGHT, io_chunksize=1024 * 1024
            )
            transfer.max_in_memory_upload_chunks = PARTS_IN_FLIGHT  # s3transfer buffers 10 parts by default
            self.client.upload_fileobj(content_body, self.bucket, artifact_id, Config=transfer)

    # a store that does not answer fails in seconds, not after botocore's minutes of retries
    client = boto3.client(
        "s3", config=Config(connect_timeout=10, read_timeout=120, retries={"max_attempts": 3})
    )
    return StreamingBoto3Store(bucket, client=client, avoid_buf_copy=True)


def _gcs_store(bucket: str) -> OptunaStore:
    import warnings

    import optuna
    from optuna.artifacts import GCSArtifactStore

    try:
        import google.cloud.storage  # noqa: F401
    except ImportError:
        raise ConfigError(
            "a gs:// artifact store needs google-cloud-storage, which is not installed: "
            "pip install google-cloud-storage"
        ) from None

    class StreamingGCSStore(GCSArtifactStore):
        """Optuna's GCS store, streaming both ways (Optuna's reads and writes whole objects in memory)."""

        def open_reader(self, artifact_id: str) -> BinaryIO:
            from optuna.artifacts.exceptions import ArtifactNotFound

            blob = self.bucket_obj.get_blob(artifact_id)
            if blob is None:
                raise ArtifactNotFound(f"gs://{self.bucket_name}/{artifact_id} was not found")
            return blob.open("rb")

        def write(self, artifact_id: str, content_body: BinaryIO) -> None:
            self.bucket_obj.blob(artifact_id).upload_from_file(content_body)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return StreamingGCSStore(bucket)


class Artifacts:
    """A study's artefact store: keys are paths relative to the study folder (``trials/0003/trial.json``).

    :meth:`upload` and :meth:`download` stream through file objects (no whole file in memory);
    a download lands in a temporary file renamed into place."""

    def __init__(
        self, location: ArtifactLocation, store: OptunaStore | None = None, *, source: str = "artifacts"
    ) -> None:
        self.location = location
        self._store = store
        self.source = source  # where the URL came from ("--artifacts", "study.yaml: artifacts"), for messages

    @property
    def url(self) -> str:
        """The store's URL as the user wrote it, redacted: for messages."""
        return redact_url(self.location.url)

    @property
    def store(self) -> OptunaStore:
        """The Optuna artifact store, opened on first use (boto3 and optuna are imported then)."""
        if self._store is None:
            loc = self.location
            if loc.is_folder:
                assert loc.path is not None
                self._store = FolderStore(loc.path)
            elif loc.scheme == "s3":
                self._store = _boto3_store(loc.bucket)
            else:
                self._store = _gcs_store(loc.bucket)
        assert self._store is not None
        return self._store

    def key(self, name: str) -> str:
        return f"{self.location.prefix}/{name}" if self.location.prefix else name

    def where(self, name: str) -> str:
        """Where ``name`` is in the store, for messages."""
        loc = self.location
        if loc.is_folder:
            return str(loc.path / name) if loc.path else name
        return f"{loc.scheme}://{loc.bucket}/{self.key(name)}"

    def upload(self, name: str, source: Path) -> None:
        """Stream the local file ``source`` to ``name``; the object appears whole or not at all."""
        with open(source, "rb") as f:
            self._call("write", name, lambda: self.store.write(self.key(name), f))

    def upload_bytes(self, name: str, data: bytes) -> None:
        import io

        self._call("write", name, lambda: self.store.write(self.key(name), io.BytesIO(data)))

    def download(self, name: str, target: Path) -> bool:
        """Stream ``name`` into the local file ``target`` (a temporary file renamed into place);
        False when the store has no ``name``."""
        reader = self._reader(name)
        if reader is None:
            return False
        try:  # the connection dropping half-way leaves the target as it was
            with atomic_file(target, binary=True) as f:
                shutil.copyfileobj(reader, f, PART_BYTES)
        except TlsearchError:
            raise
        except Exception as exc:
            raise self._error("read", name, exc) from None
        finally:
            reader.close()
        return True

    def _reader(self, name: str) -> BinaryIO | None:
        """A reader of ``name`` (None when the store has no ``name``); other failures name the store."""
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            return self.store.open_reader(self.key(name))
        except ArtifactNotFound:
            return None
        except TlsearchError:
            raise
        except Exception as exc:
            raise self._error("read", name, exc) from None

    def exists(self, name: str) -> bool:
        reader = self._reader(name)
        if reader is None:
            return False
        reader.close()
        return True

    def read_bytes(self, name: str) -> bytes | None:
        """A small object's bytes (None when missing): a probe, a record."""
        reader = self._reader(name)
        if reader is None:
            return None
        try:
            return reader.read()
        finally:
            reader.close()

    def remove(self, name: str) -> None:
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            self.store.remove(self.key(name))
        except ArtifactNotFound:
            pass
        except Exception as exc:
            raise self._error("remove", name, exc) from None

    def probe(self, *, where: str | None = None) -> None:
        """Write, read back and remove a small object, before any work: a store that does not
        answer, refuses the credentials or is read-only is a :class:`ConfigError` (exit 2) naming
        it, redacted, and ``where`` it came from."""
        where = where or self.source
        name = f"{PROBE_PREFIX}/{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        payload = b"tlsearch artefact store probe\n"
        try:
            self.upload_bytes(name, payload)
            back = self.read_bytes(name)
            if back != payload:
                raise ArtifactError(f"reading {self.where(name)} back gave other bytes than were written")
            self.remove(name)
        except TlsearchError as exc:
            raise ConfigError(
                f"{where}: artifact store {self.url} is not usable: {exc}; it must be reachable and "
                "writable from this machine before the study starts"
            ) from None
        if self.location.is_folder and self.location.path is not None:  # the probe's own folder
            import contextlib

            with contextlib.suppress(OSError):
                (self.location.path / PROBE_PREFIX).rmdir()

    def _call(self, action: str, name: str, call: Any) -> None:
        try:
            call()
        except TlsearchError:
            raise
        except Exception as exc:
            raise self._error(action, name, exc) from None

    def _error(self, action: str, name: str, exc: BaseException) -> ArtifactError:
        detail = _redact_text(f"{type(exc).__name__}: {exc}", self.location)
        return ArtifactError(f"cannot {action} {self.where(name)}: {detail[:300]}")


def _redact_text(text: str, location: ArtifactLocation) -> str:
    """An error's text with anything that looks like a credential hidden: ``user:pass@`` in URLs,
    and the secret key and session token of the environment if a library echoed them."""
    import re

    text = re.sub(r"(\w+://)[^/\s@]+@", r"\1***@", text)
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def open_artifacts(spec: str, *, base: Path | None = None, where: str = "artifacts") -> Artifacts:
    """The store of the artefact URL ``spec`` (see :func:`parse_artifacts`), not yet contacted."""
    return Artifacts(parse_artifacts(spec, base=base, where=where), source=where)
