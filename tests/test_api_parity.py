"""The CLI is thin over :class:`tlsearch.Study`: for each command, the CLI and the Python API give the
same result (the same study.json, exported model metadata, ranking, status, report, worker trials).

One tiny study (one trial, one epoch, exported) is run twice, once by ``tlsearch run`` and once by
``Study.run()``; the other commands then read those folders both ways.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import tlsearch
from tlsearch.cli import main

STUDY = {
    "name": "parity",
    "data": {"image_size": 32},
    "space": {
        "backbone": {"timm": {"model": "test_efficientnet", "weights": "random"}},
        "head": ["linear"],
        "freezing": ["linear_probe"],
    },
    "training": {"epochs": 1, "batch_size": 16, "lr": 1e-2},
    "search": {"n_trials": 1, "seed": 0, "pruner": "none"},
    "export": {"enabled": True},
}


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity")
    study = {
        **STUDY,
        "data": {**STUDY["data"], "train": str(shapes_dir / "train"), "val": str(shapes_dir / "val")},
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    cli_out, api_out = root / "cli", root / "api"
    _cli("run", path, "--out", cli_out, "--console", "plain")
    result = tlsearch.Study.from_yaml(path, out=api_out).run(progress=False)
    assert result.problem() is None
    assert result.exported is not None and result.exported.report.path == api_out / "model.onnx"
    return {"yaml": path, "cli": cli_out, "api": api_out}


def _metadata(model: Path) -> dict[str, Any]:
    """The exported model's metadata, less what names the file or the moment it was made."""
    meta = json.loads(model.with_suffix(".json").read_text())["metadata"]
    return {k: v for k, v in meta.items() if not any(s in k for s in ("path", "time", "created", "date"))}


def test_run_writes_the_same_study_and_exports_the_same_model(ran: dict[str, Path]) -> None:
    from tlsearch.search import StudyDir

    cli_config, api_config = (StudyDir(ran[k]).load_config() for k in ("cli", "api"))
    assert cli_config == api_config
    assert (ran["cli"] / "model.onnx").is_file() and (ran["api"] / "model.onnx").is_file()
    cli_meta, api_meta = _metadata(ran["cli"] / "model.onnx"), _metadata(ran["api"] / "model.onnx")
    assert cli_meta.keys() == api_meta.keys()
    for key in ("backbone", "task", "labels", "params", "trial"):
        if key in cli_meta:
            assert cli_meta[key] == api_meta[key], key


def test_run_again_exports_nothing_when_the_model_is_the_best_trials(ran: dict[str, Path]) -> None:
    study = tlsearch.Study.from_yaml(ran["yaml"], out=ran["api"])
    assert study.exported_best() == ran["api"] / "model.onnx"
    assert study.export_best().current == ran["api"] / "model.onnx"  # what `tlsearch run` says it skips


def test_status_is_the_same_dict(ran: dict[str, Path]) -> None:
    cli = json.loads(_cli("status", ran["api"], "--json"))
    api = json.loads(json.dumps(tlsearch.Study.open(ran["api"]).status(), default=str))
    assert cli == api
    assert api["finished"] == 1 and api["best"]["trial"] == 0
    from_yaml = tlsearch.Study.open(ran["yaml"], out=ran["api"]).status()  # `status STUDY.yaml --out DIR`
    assert json.loads(json.dumps(from_yaml, default=str)) == cli


def test_export_writes_the_same_model_metadata(ran: dict[str, Path], tmp_path: Path) -> None:
    _cli("export", ran["api"], "--out", tmp_path / "cli.onnx")
    report = tlsearch.Study.from_dir(ran["api"]).export(path=tmp_path / "api.onnx")
    assert report.path == tmp_path / "api.onnx"
    assert _metadata(tmp_path / "cli.onnx") == _metadata(tmp_path / "api.onnx")


def test_rank_gives_the_same_ranking(ran: dict[str, Path]) -> None:
    cli = json.loads(_cli("rank", ran["yaml"], "--out", ran["api"], "--json", "--score", "hscore"))
    api = tlsearch.Study.from_yaml(ran["yaml"], out=ran["api"]).rank(score="hscore")
    assert api.score == "hscore"
    keys = ("label", "score", "num_params", "images", "error")
    assert [{k: r.get(k) for k in keys} for r in cli] == [
        {k: r.get(k) for k in keys} for r in json.loads(json.dumps(api.to_dicts(), default=str))
    ]


def test_report_writes_the_same_plots(ran: dict[str, Path], tmp_path: Path) -> None:
    output = _cli("report", ran["api"], "--out", tmp_path / "cli.html")
    files = tlsearch.Study.open(ran["api"]).report(out=tmp_path / "api.html")
    assert files.html == tmp_path / "api.html" and files.html.is_file()
    expected = [f"wrote {tmp_path / 'cli.html'}"] + [
        f"  no {p.title.lower()}: {p.note}" for p in files.plots if p.figure is None
    ]
    assert output.splitlines() == expected


def test_watch_returns_once_the_budget_is_done(ran: dict[str, Path]) -> None:
    """``status --watch`` and ``Study.watch`` follow the study until its budget is done: on a
    finished study both return at once, and the CLI then prints the status as without --watch."""
    events: list[str] = []
    tlsearch.Study.open(ran["api"]).watch(lambda name, **kw: events.append(name))
    assert "trial_end" not in events  # trials already over when the watch starts are not replayed
    watched = _cli("status", ran["api"], "--watch", "--console", "plain")
    assert watched.endswith(_cli("status", ran["api"]))


def test_worker_runs_the_same_trial(ran: dict[str, Path]) -> None:
    """Last: it adds a trial to each folder. ``tlsearch worker DIR`` and ``Study.from_dir(DIR).worker()``
    join the study and run the next trial, the same one (same sampler seed, same trials before)."""
    from tlsearch.search import StudyDir

    _cli("worker", ran["cli"], "--n-trials", "2")
    result = tlsearch.Study.from_dir(ran["api"]).worker(tlsearch.WorkerSettings()).run(n_trials=2)
    assert result.problem() is None
    params = []
    for key in ("cli", "api"):
        source = tlsearch.Study.open(ran[key]).load()
        trials = source.study.get_trials(deepcopy=False)
        assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
        params.append(trials[1].params)
        assert StudyDir(ran[key]).load_config().search.n_trials == 1  # joining changes no config
    assert params[0] == params[1]


def test_worker_settings_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval must be an integer >= 1 but got 0"):
        tlsearch.WorkerSettings(heartbeat_interval=0)
    with pytest.raises(ValueError, match="max_failures_in_a_row must be >= 1 or None but got 0"):
        tlsearch.WorkerSettings(max_failures_in_a_row=0)


def test_the_api_loads_without_torch_or_optuna() -> None:
    """``tlsearch.Study`` is importable where the search is not needed yet (``import tlsearch`` stays
    light): torch and optuna load when a method needs them."""
    import subprocess
    import sys

    probe = "import sys, tlsearch; tlsearch.Study, tlsearch.Worker, tlsearch.WorkerSettings; "
    probe += "print(sorted(m for m in ('torch', 'optuna', 'timm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_local_workers_start_without_the_cli_on_path(
    ran: dict[str, Path], monkeypatch, tmp_path: Path
) -> None:
    """``Study.run(workers=2)`` starts ``python -m tlsearch.worker_process``: no ``tlsearch``
    script is looked up, so an empty ``PATH`` does not matter."""
    from tlsearch.search.workers import worker_command

    settings = tlsearch.WorkerSettings(
        workers=2, heartbeat_interval=5, grace_period=20, max_failures_in_a_row=None
    )
    cmd = worker_command(tmp_path, storage="s.journal", out_dir=tmp_path, settings=settings)
    assert cmd[1:3] == ["-m", "tlsearch.worker_process"]
    assert cmd[cmd.index("--heartbeat-interval") + 1] == "5" and cmd[cmd.index("--grace-period") + 1] == "20"
    assert cmd[cmd.index("--max-failures-in-a-row") + 1] == "none"

    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    study = tlsearch.Study.from_yaml(ran["yaml"], out=tmp_path / "out")
    result = study.run(workers=2, n_trials=2, export=False, progress=False)
    assert result.problem() is None
    trials = result.study.get_trials(deepcopy=False)
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    logs = [(tmp_path / "out" / "logs" / f"worker-{rank}.log") for rank in range(2)]
    assert not any(path.exists() for path in logs)  # without on_event the workers print here


def test_create_queues_the_same_warm_start_and_runs_no_trial(ran: dict[str, Path], tmp_path: Path) -> None:
    """``tlsearch run --workers 0`` and ``Study.create()``: the creator step of a cluster launch."""
    import optuna

    study = yaml.safe_load(ran["yaml"].read_text())
    study["search"] = {**study["search"], "warm_start": True, "n_trials": 2}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    output = _cli("run", path, "--out", tmp_path / "cli", "--workers", "0", "--console", "plain")
    assert "is ready" in output
    result = tlsearch.Study.from_yaml(path, out=tmp_path / "api").create()
    assert result.exported is None

    def queued(folder: Path) -> list[tuple[str, dict[str, Any]]]:
        trials = tlsearch.Study.open(folder).load().study.trials
        assert {t.state for t in trials} == {optuna.trial.TrialState.WAITING}
        return [(t.number, t.system_attrs.get("fixed_params")) for t in trials]

    assert queued(tmp_path / "cli") == queued(tmp_path / "api") != []
