"""An exported model in an object store, fetched into a local cache for :class:`Predictor`.

``s3://bucket/prefix/model.onnx`` (or ``gs://…``) is the model that ``tlsearch export`` uploaded
to the study's artefact store (:mod:`tlsearch.artifacts`); a URL that does not end in ``.onnx`` is
the store itself, whose ``model.onnx`` (``export.path``'s default) is meant. The model and its
``model.json`` are streamed into ``<cache>/<one folder per URL>/<one per version>/``, each file a
temporary file renamed into place once whole, so a download killed half-way leaves nothing that a
later run takes. Each fetch asks the store for the object's version (S3's ETag, GCS's generation;
one ``HEAD`` request) and downloads only when the cache does not hold that version; the download
is pinned to it (``If-Match``), and a version replaced by a new one is removed.

Only the standard library here, and boto3 (or google-cloud-storage) once such a URL is given:
deploy never needs torch or optuna.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from tlsearch.artifacts import OBJECT_SCHEMES, ArtifactLocation, _redact_text, parse_artifacts, redact_url
from tlsearch.errors import TlsearchError
from tlsearch.files import atomic_file, writing

#: the model a store URL without a ``.onnx`` name means (``export.path``'s default)
DEFAULT_MODEL = "model.onnx"
#: the cache folder when neither ``cache_dir`` nor this variable says otherwise: ~/.cache/tlsearch/models
CACHE_ENV = "TLSEARCH_MODEL_CACHE"
CHUNK_BYTES = 1024 * 1024
DENIED = (
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
)
MISSING = ("404", "NoSuchKey", "NoSuchBucket", "NotFound")


class ModelFetchError(TlsearchError):
    """A model could not be fetched from its store: the message names it (credentials redacted)
    and what to do. Before any image is read, so the CLI exits with code 2."""

    exit_code = 2


def is_remote(model: str | os.PathLike[str]) -> bool:
    """Whether ``model`` is an object-store URL (``s3://…``, ``gs://…``) rather than a local file."""
    scheme, sep, _ = str(model).partition("://")
    return bool(sep) and scheme.lower() in OBJECT_SCHEMES


def local_path(model: str | os.PathLike[str]) -> Path:
    """A local model's path: ``file:///abs/model.onnx`` is ``/abs/model.onnx``."""
    text = os.fspath(model)
    return Path(text[len("file://") :]) if text.lower().startswith("file://") else Path(text)


def default_cache_dir() -> Path:
    """``$TLSEARCH_MODEL_CACHE``, else ``$XDG_CACHE_HOME/tlsearch/models`` (``~/.cache/…``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tlsearch" / "models"


@dataclass(frozen=True)
class _Version:
    tag: str  # the store's version of the object: S3's ETag, GCS's generation
    size: int


def fetch_model(url: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local path of the model at ``url`` (see the module docstring), downloaded into
    ``cache_dir`` (default :func:`default_cache_dir`) unless the cache holds the store's current
    version already. Raises :class:`ModelFetchError` when the store does not answer, has no such
    model or refuses the credentials, naming the URL (redacted)."""
    location = parse_artifacts(url, where="MODEL")
    key = location.prefix if location.prefix.endswith(".onnx") else _join(location.prefix, DEFAULT_MODEL)
    name = key.rsplit("/", 1)[-1]
    shown = f"{location.scheme}://{location.bucket}/{key}"
    store: _S3 | _GCS = _S3(location, shown) if location.scheme == "s3" else _GCS(location, shown)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / _digest(f"{location.scheme} {store.endpoint} {location.bucket} {key}")
    with _locked(folder):
        version = store.stat(key)
        if version is None:
            raise ModelFetchError(
                f"no model at {shown}: the store has no such object (or no such bucket); check the URL: "
                f"`tlsearch export` uploads the model (export.path, {DEFAULT_MODEL} by default) under the "
                "study's artefact URL, as s3://bucket/prefix/model.onnx"
            )
        here = folder / _digest(f"{version.tag} {version.size}") / name
        if here.is_file() and here.stat().st_size == version.size:
            return here
        _clear(folder, keep=here.parent)  # other versions; this one's leftovers of a killed download
        metadata = key.removesuffix(".onnx") + ".json"
        metadata_version = store.stat(metadata)
        if metadata_version is not None:  # the readable copy of the metadata, for people
            store.download(metadata, metadata_version, here.with_suffix(".json"))
        store.download(key, version, here)  # the model last: its presence means the pair is whole
        with atomic_file(folder / "source.json") as f:
            json.dump({"url": redact_url(shown), "version": version.tag, "size": version.size}, f)
    return here


class _S3:
    """An S3 bucket through boto3 (the endpoint from ``AWS_ENDPOINT_URL_S3`` for a non-AWS store)."""

    def __init__(self, location: ArtifactLocation, shown: str) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ModelFetchError(
                f"{shown}: an s3:// model needs boto3, which is not installed: pip install boto3"
            ) from None
        self.location, self.bucket = location, location.bucket
        # a store that does not answer fails in seconds, not after botocore's minutes of retries
        config = Config(connect_timeout=10, read_timeout=120, retries={"max_attempts": 3})
        self.client = boto3.client("s3", config=config)
        self.endpoint = str(self.client.meta.endpoint_url)

    def stat(self, key: str) -> _Version | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _code(exc) in MISSING:
                return None
            raise self._error(exc, key) from None
        return _Version(tag=str(head["ETag"]), size=int(head["ContentLength"]))

    def download(self, key: str, version: _Version, target: Path) -> None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key, IfMatch=version.tag)["Body"]
        except Exception as exc:
            raise self._error(exc, key) from None
        with contextlib.closing(body):
            _save(body, version, target, where=self._where(key), on_error=lambda exc: self._error(exc, key))

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _error(self, exc: BaseException, key: str) -> ModelFetchError:
        where, code = self._where(key), _code(exc)
        detail = _one_line(_redact_text(f"{type(exc).__name__}: {exc}", self.location))
        if code in DENIED:
            return ModelFetchError(
                f"access to {where} was denied ({detail}): the credentials are refused or may not read "
                "it; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws or the role (s3:GetObject)"
            )
        if code in ("412", "PreconditionFailed"):
            return ModelFetchError(
                f"{where} was replaced while it downloaded; run again to fetch the new one"
            )
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            return ModelFetchError(
                f"cannot read {where}: no AWS credentials found ({detail}); set AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials or a role"
            )
        if type(exc).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
            return ModelFetchError(
                f"cannot reach the store of {where} at {_redact_text(self.endpoint, self.location)} "
                f"({detail}); check the network, and AWS_ENDPOINT_URL_S3 for a store that is not AWS"
            )
        return ModelFetchError(f"cannot read {where}: {detail}")


class _GCS:
    """A Google Cloud Storage bucket through google-cloud-storage (untested here: no GCS emulator
    installs offline; the calls are the ones :mod:`tlsearch.artifacts` makes)."""

    endpoint = "gcs"

    def __init__(self, location: ArtifactLocation, shown: str) -> None:
        try:
            from google.cloud import storage
        except ImportError:
            raise ModelFetchError(
                f"{shown}: a gs:// model needs google-cloud-storage, which is not installed: "
                "pip install google-cloud-storage"
            ) from None
        self.bucket = storage.Client().bucket(location.bucket)
        self.name = location.bucket

    def stat(self, key: str) -> _Version | None:
        try:
            blob = self.bucket.get_blob(key)
        except Exception as exc:
            raise self._error(exc, key) from None
        return None if blob is None else _Version(tag=str(blob.generation), size=int(blob.size or 0))

    def download(self, key: str, version: _Version, target: Path) -> None:
        try:
            reader = self.bucket.blob(key, generation=int(version.tag)).open("rb")
        except Exception as exc:
            raise self._error(exc, key) from None
        with contextlib.closing(reader):
            _save(
                reader,
                version,
                target,
                where=f"gs://{self.name}/{key}",
                on_error=lambda e: self._error(e, key),
            )

    def _error(self, exc: BaseException, key: str) -> ModelFetchError:
        where = f"gs://{self.name}/{key}"
        detail = _one_line(f"{type(exc).__name__}: {exc}")
        if type(exc).__name__ in ("Forbidden", "Unauthorized", "DefaultCredentialsError"):
            return ModelFetchError(
                f"access to {where} was denied ({detail}): check GOOGLE_APPLICATION_CREDENTIALS or the "
                "account's storage.objects.get permission"
            )
        return ModelFetchError(f"cannot read {where}: {detail}")


class _ReadFailed(Exception):
    """The store's stream failed (kept apart from the local file's errors, which stay write errors)."""


def _save(reader: BinaryIO, version: _Version, target: Path, *, where: str, on_error: Any) -> None:
    """Stream ``reader`` into ``target`` through a temporary file renamed into place once it holds
    exactly ``version.size`` bytes; otherwise nothing is left."""
    try:
        with atomic_file(target, binary=True) as f:
            _copy(reader, f)
            if f.tell() != version.size:
                raise ModelFetchError(
                    f"{where} arrived with {f.tell()} of its {version.size} bytes; run again to fetch it"
                )
    except _ReadFailed as failed:  # the connection dropped half-way
        raise on_error(failed.__cause__) from None


def _copy(reader: BinaryIO, f: IO[bytes]) -> None:
    while True:
        try:
            chunk = reader.read(CHUNK_BYTES)
        except Exception as exc:
            raise _ReadFailed() from exc
        if not chunk:
            return
        f.write(chunk)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One fetch of a URL at a time on this machine: the next one finds the first one's download
    (and any temporary file then present is a killed download's, safe to remove)."""
    with writing(folder):  # a cache folder that cannot be written: one line naming it
        folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no lock; concurrent fetches then download twice
        yield
        return
    with writing(folder / ".lock"):
        lock = open(folder / ".lock", "a")  # noqa: SIM115 (closed below, after the block)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _clear(folder: Path, *, keep: Path) -> None:
    """Remove the URL's other cached versions and the temporary files of killed downloads."""
    for entry in folder.iterdir():
        if entry.is_dir() and entry != keep:
            shutil.rmtree(entry, ignore_errors=True)
    if keep.is_dir():
        for leftover in keep.glob("*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
