"""`tlsearch predict` and `Predictor` with a model in the artefact store: the model is exported and
uploaded on "machine A" (one folder), and predicted on "machine B" (another, empty folder) from its
URL alone, against moto's S3 server on loopback (tests/s3_server.py), which stands in for S3."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from tests.s3_server import Bucket, free_port
from tests.test_deploy import BLOCK_TORCH, CONFIG, LABELS, write_images
from tlsearch.artifacts import open_artifacts
from tlsearch.cli import main
from tlsearch.deploy import ModelFetchError, Predictor
from tlsearch.search.study_dir import StudyDir

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "studies/pets"


def _export(folder: Path, seed: int, files: list[Path]) -> Path:
    import timm
    import torch

    from tlsearch.export import export_onnx
    from tlsearch.preprocessing import prepare_image

    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(LABELS)).eval()
    prepared = np.stack([prepare_image(p, CONFIG) for p in files])
    meta = {"task": "classification", "labels": LABELS, "data_config": CONFIG.to_dict()}
    return export_onnx(model, path=folder / "model.onnx", metadata=meta, validation_images=prepared).path


@pytest.fixture(scope="module")
def machine_a(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Machine A's study folder with an exported model (and a second one, from other weights)."""
    root = tmp_path_factory.mktemp("machine-a")
    files = write_images(root / "images")
    return {
        "root": root / "study",
        "images": root / "images",
        "model": _export(root / "study", 0, files),
        "other": _export(root / "other", 1, files),
    }


@pytest.fixture
def store(s3_bucket: Bucket, machine_a: dict[str, object]) -> str:
    """The study's artefact URL, with machine A's export uploaded as `tlsearch export` does."""
    url = f"{s3_bucket.url}/{PREFIX}"
    StudyDir(machine_a["root"], open_artifacts(url)).share_export(machine_a["model"])  # type: ignore[arg-type]
    assert s3_bucket.listed() == [f"{PREFIX}/model.json", f"{PREFIX}/model.onnx"]
    return url


@pytest.fixture
def machine_b(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder; the model cache goes in it too (not the user's ~/.cache)."""
    folder = tmp_path / "machine-b"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("TLSEARCH_MODEL_CACHE", str(folder / "cache"))
    return folder


def _predict(model: object, images: object, *extra: str) -> Result:
    return CliRunner().invoke(main, ["predict", str(model), str(images), "--json", *extra])


def _labels(result: Result) -> list[object]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _cached_models(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file() and ".onnx" in p.name)


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> Callable[[str, str], int]:
    """How many requests ``method`` for ``path`` the S3 server logged (its own werkzeug log)."""
    caplog.set_level(logging.INFO, logger="werkzeug")

    def requested(method: str, path: str) -> int:
        lines = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
        return sum(1 for line in lines if re.search(rf"\b{method} {re.escape(path)} HTTP", line))

    return requested


def test_predict_on_another_machine_from_the_store_gives_the_local_predictions(
    store: str, machine_a: dict[str, object], machine_b: Path
) -> None:
    local = _labels(_predict(machine_a["model"], machine_a["images"]))
    remote = _labels(_predict(f"{store}/model.onnx", machine_a["images"]))
    assert remote == local
    cached = _cached_models(machine_b / "cache")
    assert [p.name for p in cached] == ["model.onnx"]
    assert cached[0].read_bytes() == Path(str(machine_a["model"])).read_bytes()
    assert (cached[0].with_suffix(".json")).read_bytes() == Path(str(machine_a["model"])).with_suffix(
        ".json"
    ).read_bytes()
    # the study's artefact URL alone means its model.onnx; the API takes the same URLs
    assert _labels(_predict(store, machine_a["images"])) == local
    predictor = Predictor(f"{store}/model.onnx")
    assert predictor.url == f"{store}/model.onnx" and predictor.path == cached[0]
    assert predictor.predict([next(Path(str(machine_a["images"])).rglob("*.png"))], top_k=1)[0].ok


def test_a_second_predict_uses_the_cache_and_a_replaced_model_is_fetched_again(
    store: str,
    s3_bucket: Bucket,
    machine_a: dict[str, object],
    machine_b: Path,
    server_log: Callable[[str, str], int],
) -> None:
    key = f"/{s3_bucket.name}/{PREFIX}/model.onnx"
    first = _labels(_predict(f"{store}/model.onnx", machine_a["images"]))
    assert server_log("GET", key) == 1
    second = _labels(_predict(f"{store}/model.onnx", machine_a["images"]))
    assert second == first
    assert server_log("GET", key) == 1  # the cached copy: only its version was asked (HEAD)
    assert server_log("HEAD", key) == 2

    # the study exports again: the same URL now holds other weights, which the next predict fetches
    other = Path(str(machine_a["other"]))
    StudyDir(other.parent, open_artifacts(store)).share_export(other)
    third = _labels(_predict(f"{store}/model.onnx", machine_a["images"]))
    assert server_log("GET", key) == 2
    assert third == _labels(_predict(other, machine_a["images"])) and third != first
    cached = _cached_models(machine_b / "cache")
    assert [p.read_bytes() for p in cached] == [other.read_bytes()]  # the replaced version is gone


def test_a_failed_download_leaves_nothing_the_next_run_takes(
    store: str, machine_a: dict[str, object], machine_b: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlsearch.deploy import _remote

    real_copy = _remote._copy

    class DropsHalfWay:  # the store's stream: a first part, then the connection is reset
        def __init__(self, reader: object) -> None:
            self.reader, self.parts = reader, 0

        def read(self, n: int) -> bytes:
            self.parts += 1
            if self.parts > 1:
                raise ConnectionResetError("connection reset by peer")
            return self.reader.read(1000)  # type: ignore[attr-defined, no-any-return]

    def copy(reader: object, f: Any) -> None:  # model.json whole, the model cut off
        real_copy(DropsHalfWay(reader) if f.name.endswith(".onnx.tmp") else reader, f)  # type: ignore[arg-type]

    monkeypatch.setattr(_remote, "_copy", copy)
    failed = _predict(f"{store}/model.onnx", machine_a["images"])
    assert failed.exit_code == 2, failed.output
    assert failed.stderr.strip() == (
        f"error: cannot read {store}/model.onnx: ConnectionResetError: connection reset by peer"
    )
    assert _cached_models(machine_b / "cache") == []  # no model, not even a temporary file

    monkeypatch.setattr(_remote, "_copy", real_copy)
    assert _labels(_predict(f"{store}/model.onnx", machine_a["images"])) == _labels(
        _predict(machine_a["model"], machine_a["images"])
    )


KILLED_CHILD = textwrap.dedent(
    """
    import sys
    from tlsearch.deploy import _remote, fetch_model

    real_copy = _remote._copy

    def stall(reader, f):  # the model.json whole, half the model, then wait to be killed
        if not f.name.endswith(".onnx.tmp"):
            return real_copy(reader, f)
        f.write(reader.read(_remote.CHUNK_BYTES // 8))
        f.flush()
        print("half-way", flush=True)
        sys.stdin.read()

    _remote._copy = stall
    fetch_model(sys.argv[1])
    """
)


def test_a_download_killed_midway_leaves_nothing_the_next_run_takes(
    store: str, machine_a: dict[str, object], machine_b: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, f"{store}/model.onnx"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}"},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "half-way", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    left = _cached_models(machine_b / "cache")
    assert len(left) == 1 and left[0].name.endswith(".onnx.tmp")  # a name no run takes

    predictor = Predictor(f"{store}/model.onnx")
    assert predictor.path.read_bytes() == Path(str(machine_a["model"])).read_bytes()
    assert _cached_models(machine_b / "cache") == [predictor.path]  # the killed download's file removed


def _one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in result.output
    return lines[0]


def test_a_missing_model_exits_2_naming_its_url(
    store: str, machine_a: dict[str, object], machine_b: Path
) -> None:
    line = _one_line_error(_predict(f"{store}/nope/model.onnx", machine_a["images"]))
    assert f"no model at {store}/nope/model.onnx" in line and "tlsearch export" in line
    line = _one_line_error(_predict("s3://no-such-bucket-tlsearch/pets", machine_a["images"]))
    assert "no model at s3://no-such-bucket-tlsearch/pets/model.onnx" in line
    with pytest.raises(ModelFetchError, match=f"no model at {re.escape(store)}/int8.onnx"):
        Predictor(f"{store}/int8.onnx")
    assert not (machine_b / "cache").exists() or not _cached_models(machine_b / "cache")


def test_an_unreachable_store_exits_2_naming_the_url_and_the_endpoint(
    store: str, machine_a: dict[str, object], machine_b: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    line = _one_line_error(_predict(f"{store}/model.onnx", machine_a["images"]))
    assert f"cannot reach the store of {store}/model.onnx at {endpoint}" in line
    assert "AWS_ENDPOINT_URL_S3" in line


class _Refusing(BaseHTTPRequestHandler):
    """An S3 endpoint that refuses every request's credentials, as S3 does a wrong key."""

    def _refuse(self) -> None:
        body = b"<Error><Code>InvalidAccessKeyId</Code><Message>The key does not exist.</Message></Error>"
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = _refuse

    def log_message(self, *args: object) -> None:
        pass


def test_refused_credentials_exit_2_naming_the_url_without_the_secret(
    s3_bucket: Bucket, machine_a: dict[str, object], machine_b: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{server.server_address[1]}")
        line = _one_line_error(_predict(f"{s3_bucket.url}/pets/model.onnx", machine_a["images"]))
    finally:
        server.shutdown()
        thread.join()
    assert f"access to {s3_bucket.url}/pets/model.onnx was denied" in line
    assert "AWS_ACCESS_KEY_ID" in line


def test_an_unwritable_cache_folder_is_one_line_naming_it(
    store: str, machine_a: dict[str, object], machine_b: Path
) -> None:
    (machine_b / "a-file").write_text("not a folder")
    cache = machine_b / "a-file" / "cache"
    result = _predict(f"{store}/model.onnx", machine_a["images"], "--cache-dir", str(cache))
    assert result.exit_code == 1 and result.stderr.startswith(f"error: cannot write {cache}")
    assert "Traceback" not in result.output


def test_credentials_in_the_url_are_refused_and_never_shown(
    machine_a: dict[str, object], machine_b: Path
) -> None:
    result = _predict("s3://AKIAXX:hunter2@bucket/pets/model.onnx", machine_a["images"])
    assert result.exit_code == 2 and "hunter2" not in result.output
    assert "carries credentials" in result.output and "s3://***@bucket/pets/model.onnx" in result.output


def test_a_local_model_is_read_in_place_and_file_urls_work(
    machine_a: dict[str, object], machine_b: Path
) -> None:
    model = Path(str(machine_a["model"]))
    assert _labels(_predict(f"file://{model}", machine_a["images"])) == _labels(
        _predict(model, machine_a["images"])
    )
    assert Predictor(f"file://{model}").path == model and Predictor(model).url is None
    assert not (machine_b / "cache").exists()


def test_predict_from_the_store_needs_neither_torch_nor_optuna(
    store: str, machine_a: dict[str, object], machine_b: Path
) -> None:
    code = BLOCK_TORCH.replace(
        '("torch", "torchvision", "timm")', '("torch", "torchvision", "timm", "optuna")'
    )
    script = code + textwrap.dedent(
        f"""
        from tlsearch.cli import main
        try:
            main(["predict", {str(machine_a["model"])!r}, {str(machine_a["images"])!r}, "--json"], prog_name="tlsearch")
        except SystemExit as exit:
            assert not exit.code, exit.code
        assert "boto3" not in sys.modules, "a local model imported boto3"
        main(["predict", {store + "/model.onnx"!r}, {str(machine_a["images"])!r}, "--json"], prog_name="tlsearch")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}"},
    )
    assert proc.returncode == 0, proc.stderr
    local, remote = proc.stdout.split("\n]\n", 1)
    assert json.loads(local + "]") == json.loads(remote)
