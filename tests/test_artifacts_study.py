"""A real tiny study whose artefacts go to S3 (the moto stand-in) or to a separate folder, then the
two-machine case: another, empty directory with only the storage URL and the artefact URL exports
a verified model (the same as the first machine's), and reads the study's status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import tlsearch
from tests.s3_server import Bucket
from tlsearch.cli import main

pytestmark = pytest.mark.slow

TRIALS = 2
SECTIONS: dict[str, Any] = {
    "training": {"epochs": 1},
    "search": {"n_trials": TRIALS, "pruner": "none"},
    "space": {"freezing": ["linear_probe"]},
    "export": {"enabled": True},
}


def _cli(*args: Any) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _outputs(model: Path) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in feed.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return np.asarray(session.run(None, {feed.name: x})[0])


def _best(storage: str) -> int:
    import optuna

    study = optuna.load_study(study_name="tiny", storage=tlsearch_storage(storage))
    return int(study.best_trial.number)


def tlsearch_storage(spec: str) -> Any:
    from tlsearch.search.storage import make_storage

    return make_storage(spec, heartbeat_interval=None, grace_period=None)


def test_a_study_shares_through_s3_and_another_machine_exports_it(
    s3_bucket: Bucket, write_study, shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{s3_bucket.url}/studies/tiny"
    study = write_study(artifacts=url, **SECTIONS)
    storage = tmp_path / "db" / "study.journal"  # the database both machines reach
    first = tmp_path / "machine1" / "runs"
    _cli("run", study, "--out", first, "--storage", storage, "--console", "plain")

    keys = s3_bucket.listed("studies/tiny/")
    names = [k.removeprefix("studies/tiny/") for k in keys]
    trials = sorted({n.split("/")[1] for n in names if n.startswith("trials/")})
    assert len(trials) == TRIALS
    for trial in trials:
        assert f"trials/{trial}/model.safetensors" in names and f"trials/{trial}/trial.json" in names
    assert {"study.json", "model.onnx", "model.json"} <= set(names)
    assert [n for n in names if n.startswith("trails/")], names  # the trail, once per folder
    assert not [n for n in names if n.startswith(("cache/", "logs/", ".tlsearch-probe"))]
    assert (first / "cache").is_dir()  # each worker's caches stay local

    # machine 2: an empty directory, only the two URLs
    second = tmp_path / "machine2"
    second.mkdir()
    monkeypatch.chdir(second)
    output = _cli("export", "here", "--storage", storage, "--artifacts", url, "--out", "here/m2.onnx")
    assert "onnxruntime parity" in output
    best = _best(str(storage))
    assert (second / f"here/trials/{best:04d}/model.safetensors").is_file()  # fetched from S3
    meta = json.loads((second / "here/m2.json").read_text())["metadata"]
    assert meta["trial"] == best
    np.testing.assert_allclose(_outputs(second / "here/m2.onnx"), _outputs(first / "model.onnx"), atol=1e-5)
    assert {"studies/tiny/m2.onnx", "studies/tiny/m2.json"} <= set(s3_bucket.listed())  # uploaded

    # predict on machine 2 from the URL alone: the first machine's export, as its local file predicts it
    val = shapes_dir / "val"
    local = _cli("predict", first / "model.onnx", val, "--json")
    assert _cli("predict", f"{url}/model.onnx", val, "--json", "--cache-dir", second / "cache") == local

    # a worker on machine 2 with an empty folder: the study.json from S3, its checkpoint to S3
    _cli("worker", "w2", "--storage", storage, "--artifacts", url, "--n-trials", TRIALS + 1)
    added = {n.split("/")[3] for n in s3_bucket.listed("studies/tiny/trials/")} - set(trials)
    assert len(added) == 1 and (second / "w2/study.json").is_file()
    assert f"studies/tiny/trials/{added.pop()}/trial.json" in s3_bucket.listed()

    status = json.loads(
        _cli("status", "elsewhere", "--storage", storage, "--artifacts", url, "--json")
    )  # yet another empty folder on machine 2
    assert status["finished"] == TRIALS + 1
    api = tlsearch.Study.open("elsewhere-api", storage=str(storage), artifacts=url).status()
    assert api.pop("folder") == "elsewhere-api" and status.pop("folder") == "elsewhere"
    assert json.loads(json.dumps(api, default=str)) == status  # the CLI is thin over the API


@pytest.mark.filterwarnings("ignore:INT8 accuracy")  # a one-epoch model: its INT8 copy may drop, warned
def test_a_study_shares_through_a_separate_folder_and_the_api_exports_it_elsewhere(
    write_study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sections = {
        **SECTIONS,
        "search": {**SECTIONS["search"], "n_trials": 1},
        "export": {"enabled": True, "int8": True, "on_accuracy_drop": "warn"},
    }
    study = write_study(artifacts="shared", **sections)  # relative: from the study file's folder
    storage = str(tmp_path / "db" / "study.journal")
    first = tmp_path / "machine1"
    result = tlsearch.Study.from_yaml(study, out=first, storage=storage).run(progress=False)
    assert result.problem() is None
    shared = tmp_path / "shared"
    assert (shared / "study.json").is_file() and (shared / "model.onnx").is_file()
    assert len(list((shared / "trials").glob("*/trial.json"))) == 1
    assert not (shared / "cache").exists()
    assert (shared / "model.int8.onnx").read_bytes() == (first / "model.int8.onnx").read_bytes()
    assert json.loads((shared / "study.json").read_text()) == json.loads((first / "study.json").read_text())

    monkeypatch.chdir(tmp_path / "db")
    elsewhere = tmp_path / "machine2" / "runs"
    opened = tlsearch.Study.from_dir(elsewhere, storage=storage, artifacts=str(shared))
    report = opened.export(path=elsewhere / "again.onnx")
    assert report.path == elsewhere / "again.onnx"
    np.testing.assert_allclose(_outputs(report.path), _outputs(first / "model.onnx"), atol=1e-5)
    assert (shared / "again.onnx").is_file() and (shared / "again.json").is_file()  # uploaded too


def test_export_from_an_empty_folder_without_a_study_in_the_store_says_so(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(tmp_path / "here"),
            "--storage",
            str(tmp_path / "x.journal"),
            "--artifacts",
            s3_bucket.url,
        ],
    )
    assert result.exit_code == 2, result.output
    assert "has no study.json" in result.output and s3_bucket.url in result.output
