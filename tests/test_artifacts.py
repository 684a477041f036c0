"""The artefact store (tlsearch.artifacts): URLs, streaming, the probe, redaction, and a writer killed
mid-upload, against a real folder and a local S3-compatible server (moto, see tests/s3_server.py)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import wait_for_marker
from tests.s3_server import Bucket, free_port
from tlsearch.artifacts import FolderStore, open_artifacts, parse_artifacts, redact_url
from tlsearch.errors import ConfigError, TlsearchError, WriteError
from tlsearch.search.study_dir import StudyDir

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


# -- URLs -------------------------------------------------------------------------------------------


def test_each_valid_form_parses(tmp_path: Path) -> None:
    s3 = parse_artifacts("s3://bucket/some/prefix/")
    assert (s3.scheme, s3.bucket, s3.prefix) == ("s3", "bucket", "some/prefix")
    gs = parse_artifacts("gs://bucket")
    assert (gs.scheme, gs.bucket, gs.prefix) == ("gs", "bucket", "")
    assert parse_artifacts("/abs/store").path == Path("/abs/store")
    assert parse_artifacts("file:///abs/store").path == Path("/abs/store")
    assert parse_artifacts("shared", base=tmp_path).path == tmp_path / "shared"  # from the study file


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("ftp://host/x", "unknown scheme 'ftp'"),
        ("file://relative", "absolute path"),
        ("s3://", "names no bucket"),
        ("", "is empty"),
    ],
)
def test_a_bad_url_names_itself_where_it_came_from_and_the_valid_forms(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_artifacts(spec, where="study.yaml: artifacts")
    message = str(err.value)
    assert message.startswith("study.yaml: artifacts:") and fragment in message
    assert "s3://bucket/prefix" in message or "credentials" in message


def test_credentials_in_the_url_are_refused_and_never_shown() -> None:
    with pytest.raises(ConfigError) as err:
        parse_artifacts("s3://AKIAKEY:sup3rsecret@bucket/prefix")
    assert "sup3rsecret" not in str(err.value) and "AKIAKEY" not in str(err.value)
    assert "s3://***@bucket/prefix" in str(err.value)
    assert redact_url("s3://bucket/p?X-Amz-Signature=abc") == "s3://bucket/p?***"
    assert redact_url("gs://user:pw@bucket/p") == "gs://***@bucket/p"


def test_the_study_file_refuses_a_bad_store_before_any_work(write_study, tmp_path: Path) -> None:
    from tests.conftest import assert_refused_before_work

    study = write_study(artifacts="ftp://host/x")
    assert_refused_before_work(study, tmp_path / "out", ["artifacts", "ftp"])


# -- the folder store -------------------------------------------------------------------------------


def test_folder_store_round_trip_and_missing_names(tmp_path: Path) -> None:
    store = open_artifacts(str(tmp_path / "store"))
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(3 * MB + 17))
    store.upload("trials/0001/model.safetensors", source)
    assert (tmp_path / "store/trials/0001/model.safetensors").read_bytes() == source.read_bytes()
    assert store.exists("trials/0001/model.safetensors") and not store.exists("trials/0002/x")
    target = tmp_path / "machine2/trials/0001/model.safetensors"
    assert store.download("trials/0001/model.safetensors", target)
    assert target.read_bytes() == source.read_bytes()
    assert store.download("trials/0002/model.safetensors", tmp_path / "none") is False
    assert not (tmp_path / "none").exists()
    store.remove("trials/0001/model.safetensors")
    assert not store.exists("trials/0001/model.safetensors")


def test_a_failed_folder_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    class Breaks(io.RawIOBase):
        def __init__(self) -> None:
            self.sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            if self.sent >= 2 * MB:
                raise OSError("connection reset")
            n = min(len(buffer), MB)
            buffer[:n] = b"x" * n
            self.sent += n
            return n

    store = FolderStore(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"previous")
    with pytest.raises(WriteError, match="model.onnx: connection reset"):
        store.write("model.onnx", io.BufferedReader(Breaks()))  # type: ignore[arg-type]
    assert (tmp_path / "model.onnx").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_key_cannot_leave_the_folder(tmp_path: Path) -> None:
    store = open_artifacts(str(tmp_path / "store"))
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(TlsearchError, match="Invalid artifact_id"):
        store.upload("../outside", tmp_path / "f")
    assert not (tmp_path / "outside").exists()


# -- S3 (moto) -------------------------------------------------------------------------------------


def test_s3_round_trip_under_the_prefix(s3_bucket: Bucket, tmp_path: Path) -> None:
    store = open_artifacts(f"{s3_bucket.url}/team/flowers")
    source = tmp_path / "model.onnx"
    source.write_bytes(os.urandom(MB + 3))
    store.upload("model.onnx", source)
    assert s3_bucket.listed() == ["team/flowers/model.onnx"]
    assert store.exists("model.onnx") and not store.exists("model.json")
    assert store.download("model.onnx", tmp_path / "back.onnx")
    assert (tmp_path / "back.onnx").read_bytes() == source.read_bytes()
    assert store.download("model.json", tmp_path / "missing.json") is False
    store.remove("model.onnx")
    assert s3_bucket.listed() == []


STREAM_CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from tlsearch.artifacts import open_artifacts

    def now_mb():  # resident memory now (ru_maxrss would carry the parent's peak over the exec)
        status = Path("/proc/self/status").read_text()
        return int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1]) / 1024

    def growth(work):
        base, peak, done = now_mb(), [0.0], threading.Event()
        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], now_mb())
                time.sleep(0.005)
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            work()
        finally:
            done.set()
            sampler.join()
        return max(peak[0], now_mb()) - base

    store = open_artifacts(sys.argv[1])
    store.probe()  # boto3 and its client loaded before the baseline
    up = growth(lambda: store.upload("big.bin", Path(sys.argv[2])))
    down = growth(lambda: store.download("big.bin", Path(sys.argv[3])))
    print(f"{up:.1f} {down:.1f}")
    """
)


def test_s3_upload_and_download_stream_without_the_whole_file_in_memory(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    size = 160 * MB
    source = tmp_path / "big.bin"
    with open(source, "wb") as f:
        for i in range(size // MB):
            f.write(bytes([i % 251]) * MB)
    out = subprocess.run(
        [sys.executable, "-c", STREAM_CHILD, f"{s3_bucket.url}/p", str(source), str(tmp_path / "back.bin")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}"},
    )
    assert out.returncode == 0, out.stderr
    grew_up, grew_down = map(float, out.stdout.split())
    # a copy of the file in memory would add ≥ 160 MB; streaming holds 4 parts of 8 MB (≈ 50 MB measured)
    assert grew_up < 80, f"upload grew the resident memory by {grew_up} MB"
    assert grew_down < 80, f"download grew the resident memory by {grew_down} MB"
    assert (tmp_path / "back.bin").stat().st_size == size
    with open(tmp_path / "back.bin", "rb") as f:
        f.seek(50 * MB)
        assert f.read(4) == bytes([50]) * 4


# -- the probe -------------------------------------------------------------------------------------


def test_probe_of_a_working_store_leaves_nothing(s3_bucket: Bucket, tmp_path: Path) -> None:
    open_artifacts(f"{s3_bucket.url}/p").probe()
    assert s3_bucket.listed() == []
    open_artifacts(str(tmp_path / "store")).probe()
    assert list((tmp_path / "store").iterdir()) == []


def test_probe_of_an_unreachable_s3_endpoint_names_it_without_credentials(
    s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        open_artifacts(f"{s3_bucket.url}/p").probe(where="--artifacts")
    message = str(err.value)
    assert message.startswith(f"--artifacts: artifact store {s3_bucket.url}/p is not usable")
    assert "cannot write" in message and "reachable and writable" in message
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in message
    assert time.monotonic() - started < 60


def test_probe_of_a_missing_bucket_names_it(s3_bucket: Bucket) -> None:
    with pytest.raises(ConfigError, match="s3://no-such-bucket-tlsearch/p is not usable.*NoSuchBucket"):
        open_artifacts("s3://no-such-bucket-tlsearch/p").probe()


def test_probe_of_an_unwritable_folder_names_it(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ConfigError, match="a-file/store is not usable: cannot write"):
        open_artifacts(str(tmp_path / "a-file" / "store")).probe()


def test_run_with_an_unusable_store_exits_2_before_reading_an_image(
    s3_bucket: Bucket, write_study, tmp_path: Path
) -> None:
    from tlsearch.cli import main

    study = write_study()
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["run", str(study), "--out", str(out), "--artifacts", "s3://no-such-bucket-tlsearch/runs"]
    )
    assert result.exit_code == 2, result.output
    assert "s3://no-such-bucket-tlsearch/runs" in result.output
    assert not out.exists()  # not even the image check's cache


# -- a writer killed mid-upload ---------------------------------------------------------------------

SHARE_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tlsearch.artifacts import open_artifacts
    from tlsearch.search.study_dir import StudyDir

    StudyDir(Path(sys.argv[1]), open_artifacts(sys.argv[2])).share_checkpoint(7)
    """
)


def _checkpoint(root: Path, weights_mb: int) -> None:
    folder = StudyDir(root).trial_dir(7)
    folder.mkdir(parents=True)
    with open(folder / "model.safetensors", "wb") as f:
        for _ in range(weights_mb):
            f.write(os.urandom(MB))
    (folder / "trial.json").write_text(json.dumps({"number": 7}))


def _start_share(root: Path, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SHARE_CHILD, str(root), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}"},
    )


def _reader_sees_no_checkpoint(tmp_path: Path, url: str) -> None:
    from tlsearch.search.checkpoint import CheckpointError, load_record

    reader = StudyDir(tmp_path / "reader", open_artifacts(url))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_record(reader.checkpoint(7))
    assert not (reader.trial_dir(7) / "model.safetensors").exists()


def test_a_writer_killed_mid_upload_to_s3_leaves_nothing_a_reader_takes(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    _checkpoint(tmp_path / "writer", 40)  # five 8 MB parts
    url = f"{s3_bucket.url}/runs"
    proc = _start_share(tmp_path / "writer", url)

    def uploading() -> bool:
        return bool(s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads"))

    wait_for_marker(uploading, proc, timeout=120, what="the multipart upload of the weights")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert s3_bucket.listed() == []  # neither the weights nor the record
    _reader_sees_no_checkpoint(tmp_path, url)


class _ReadFailsAt(io.BytesIO):
    """A source file whose disk fails after ``at`` bytes, once ``after`` is set (s3transfer reads
    ahead of its uploads: without the wait the failure may come before any part is sent)."""

    def __init__(self, size: int, at: int, after: threading.Event) -> None:
        super().__init__(bytes(size))
        self.at, self.after = at, after

    def read(self, n: int | None = -1) -> bytes:
        if self.tell() >= self.at:
            self.after.wait(timeout=120)
            raise OSError(5, "Input/output error")
        return super().read(n)


@pytest.mark.parametrize("failure", ["a part's upload", "the source file's read", "Ctrl-C"])
def test_a_multipart_upload_that_fails_with_an_exception_is_aborted(s3_bucket: Bucket, failure: str) -> None:
    """s3transfer aborts the multipart upload when the transfer fails or is interrupted (its failure
    cleanup): pinned here, as tlsearch relies on it to leave no unfinished parts (only a SIGKILL does)."""
    store = open_artifacts(f"{s3_bucket.url}/runs")
    client = store.store.client  # type: ignore[attr-defined]
    parts: list[int] = []
    uploading = threading.Event()
    size = 40 * MB  # five 8 MB parts

    def on_part(**_: object) -> None:
        parts.append(1)
        uploading.set()
        if len(parts) == 2 and failure == "a part's upload":
            raise ConnectionResetError("connection reset by peer")
        if len(parts) == 2 and failure == "Ctrl-C":  # the signal reaches the main thread, as a Ctrl-C does
            os.kill(os.getpid(), signal.SIGINT)

    client.meta.events.register("before-call.s3.UploadPart", on_part)
    source = _ReadFailsAt(size, 20 * MB if failure == "the source file's read" else size, uploading)
    expected = KeyboardInterrupt if failure == "Ctrl-C" else TlsearchError
    with pytest.raises(expected) as err:
        store._call("write", "weights", lambda: store.store.write(store.key("weights"), source))
    if failure != "Ctrl-C":
        assert f"cannot write {s3_bucket.url}/runs/weights" in str(err.value)
    assert parts, "no part was uploaded: the failure came before the multipart upload started"
    assert not client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads")
    assert s3_bucket.listed() == []


def test_a_writer_killed_mid_write_to_a_folder_leaves_nothing_a_reader_takes(tmp_path: Path) -> None:
    writer, store = tmp_path / "writer", tmp_path / "store"
    _checkpoint(writer, 1)
    weights = StudyDir(writer).trial_dir(7) / "model.safetensors"
    weights.unlink()
    os.mkfifo(weights)  # the weights arrive as slowly as this test feeds them
    proc = _start_share(writer, str(store))
    with open(weights, "wb") as feed:
        feed.write(os.urandom(MB))
        feed.flush()

        def temporary() -> list[Path]:
            return list((store / "trials/0007").glob("*.tmp")) if (store / "trials/0007").is_dir() else []

        wait_for_marker(temporary, proc, timeout=60, what="the temporary file of the weights")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftovers = sorted(p.name for p in (store / "trials/0007").iterdir())
    assert len(leftovers) == 1 and leftovers[0].endswith(".safetensors.tmp")  # a name no reader takes
    _reader_sees_no_checkpoint(tmp_path, str(store))


def test_a_reader_takes_a_complete_checkpoint(s3_bucket: Bucket, tmp_path: Path) -> None:
    _checkpoint(tmp_path / "writer", 2)
    url = f"{s3_bucket.url}/runs"
    StudyDir(tmp_path / "writer", open_artifacts(url)).share_checkpoint(7)
    assert s3_bucket.listed() == ["runs/trials/0007/model.safetensors", "runs/trials/0007/trial.json"]
    reader = StudyDir(tmp_path / "reader", open_artifacts(url))
    folder = reader.checkpoint(7)
    for name in ("model.safetensors", "trial.json"):
        assert (folder / name).read_bytes() == (tmp_path / "writer/trials/0007" / name).read_bytes()


@pytest.mark.parametrize("command", ["export", "worker"])
def test_a_missing_study_folder_without_a_store_is_refused(command: str, tmp_path: Path) -> None:
    from tlsearch.cli import main

    result = CliRunner().invoke(main, [command, str(tmp_path / "nowhere")])
    assert result.exit_code == 2, result.output
    assert "nowhere" in result.output and "only with --artifacts" in result.output
    assert not (tmp_path / "nowhere").exists()


def test_the_worker_process_refuses_a_missing_study_without_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m tlsearch.worker_process`` decides as ``tlsearch worker``. Bug caught: a missing
    path read as a study file (its own 'not found'), not refused for what it is."""
    from tlsearch.worker_process import main as worker_process

    assert worker_process([str(tmp_path / "nowhere"), "--storage", str(tmp_path / "x.journal")]) == 2
    err = capsys.readouterr().err
    assert f"{str(tmp_path / 'nowhere')!r} does not exist" in err and "only with --artifacts" in err
    assert not (tmp_path / "nowhere").exists()


def test_the_worker_process_fetches_a_missing_study_folder_from_the_store(
    write_study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bug caught: ``worker_process`` treating STUDY as a folder only if it exists, so a missing
    one with ``--artifacts`` was read as a study YAML file ('not found') where ``tlsearch worker``
    fetches it: first from a store without the study (its message names the store), then from the
    store the study was created with (the worker's folder gets its study.json, its trial runs)."""
    from tlsearch import Study
    from tlsearch.worker_process import main as worker_process

    storage = str(tmp_path / "db" / "study.journal")
    empty = tmp_path / "empty-store"
    empty.mkdir()
    assert worker_process([str(tmp_path / "w1"), "--storage", storage, "--artifacts", str(empty)]) == 2
    assert "has no study.json" in capsys.readouterr().err

    store = tmp_path / "store"
    study = write_study(
        artifacts=str(store),
        training={"epochs": 1},
        search={"n_trials": 1},
        space={"freezing": ["linear_probe"]},
    )
    Study.from_yaml(study, out=tmp_path / "creator", storage=storage).create()
    assert (store / "study.json").is_file()
    second = tmp_path / "machine2" / "w2"
    assert worker_process([str(second), "--storage", storage, "--artifacts", str(store)]) == 0, (
        capsys.readouterr()
    )
    assert json.loads((second / "study.json").read_text()) == json.loads((store / "study.json").read_text())
    assert "trial 0 complete" in capsys.readouterr().out


def test_local_workers_get_the_store_of_the_command_line(tmp_path: Path) -> None:
    """``run --workers N --artifacts URL``: each worker process is told the same store."""
    from tlsearch.search.workers import worker_command
    from tlsearch.worker_process import parse_args

    cmd = worker_command(tmp_path, storage="x.journal", out_dir=tmp_path, artifacts="s3://bucket/p")
    assert parse_args(cmd[3:]).artifacts == "s3://bucket/p"
    assert "--artifacts" not in worker_command(tmp_path, storage="x.journal", out_dir=tmp_path)
