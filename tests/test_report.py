"""The HTML report of a finished study: every section, no network resource, PNGs, few-trial studies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState, create_trial

from tlsearch.cli import main
from tlsearch.demo import make_shapes
from tlsearch.report import open_source, pareto_front, write_report
from tlsearch.search import run_study

YAML = """
name: r
data: {train: shapes/train, val: shapes/val, image_size: 32}
space:
  backbone: {timm: {model: test_efficientnet, weights: random}}
  head: [linear]
  freezing: [linear_probe, full_finetune]
training: {epochs: 2, batch_size: 16}
search: {n_trials: 2, seed: 0}
export: {enabled: false}
"""
SECTIONS = (
    "summary",
    "history",
    "curves",
    "plugins",
    "importances",
    "cost",
    "classes",
    "leaderboard",
    "model",
)


def _copy(
    trial: optuna.trial.FrozenTrial,
    state: TrialState,
    *,
    value: float | None = None,
    history: list[float] = (),
    **attrs: object,
) -> optuna.trial.FrozenTrial:
    """A trial with a real trial's parameters and attributes, but another outcome."""
    user_attrs = {
        **trial.user_attrs,
        **attrs,
        "history": [{"accuracy": h, "val_loss": 1.0, "epoch_seconds": 0.5} for h in history],
    }
    return create_trial(
        state=state,
        value=value,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=user_attrs,
        intermediate_values={i: h for i, h in enumerate(history)},
    )


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-trial run, plus copies of its first trial that completed with other scores
    (one with another backbone), one pruned after an epoch and one that failed."""
    root = tmp_path_factory.mktemp("report")
    make_shapes(root / "shapes", per_class=6, val_per_class=3, size=32)
    (root / "study.yaml").write_text(YAML)
    result = run_study(root / "study.yaml", out_dir=root / "run", progress=False)
    study = result.study
    real = study.trials[0]
    assert real.state == TrialState.COMPLETE, real.user_attrs.get("failure")
    resnet = {**real.user_attrs["choices"], "backbone.timm.model": "test_resnet"}
    study.add_trial(
        _copy(real, TrialState.COMPLETE, value=0.99, history=[0.6, 0.99], choices=resnet, params=5_000_000)
    )
    study.add_trial(_copy(real, TrialState.COMPLETE, value=0.2, history=[0.1, 0.2], seconds=0.001))
    study.add_trial(_copy(real, TrialState.PRUNED, history=[0.05]))
    study.add_trial(_copy(real, TrialState.FAIL, failure="RuntimeError: boom in the head"))
    (root / "run" / "model.onnx").write_bytes(b"not a real model")
    (root / "run" / "model.json").write_text(
        json.dumps(
            {
                "model_file": "model.onnx",
                "verification": {"max_abs_diff": 2.5e-6, "top1_agreement": 1.0},
                "quantization": {"accuracy_drop": 0.004, "speedup": 2.1},
                "labels": [f"c{i}" for i in range(20)],
            }
        )
    )
    (root / "run" / "model.int8.onnx").write_bytes(b"")
    (root / "run" / "model.int8.json").write_text("{broken")
    return root / "run"


@pytest.fixture(scope="module")
def report(study_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    return write_report(study_folder, out=tmp_path_factory.mktemp("out") / "report.html", png=True)


def test_every_section_and_plot(report) -> None:
    html = report.html.read_text()
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in html, anchor
    assert [p.name for p in report.plots if p.figure is None] == []
    assert html.count("<svg") == len(report.plots) + 1 == 6  # the plots and the confusion heat map
    assert "<h3>Best: trial 2</h3>" in html  # the resnet copy
    assert "RuntimeError: boom in the head" in html and "after epoch 1" in html  # epochs count from 1
    assert "timm(test_resnet)" in html and "timm(test_efficientnet)" in html


def test_leaderboard_orders_complete_trials(report) -> None:
    html = report.html.read_text()
    table = html[html.index('<section id="leaderboard">') : html.index('<section id="model">')]
    first_cells = re.findall(r'<tr><td class="num">(\d+)</td><td class="num">(\d+)</td>', table)
    ranks, trials = zip(*first_cells, strict=True)
    assert ranks == ("1", "2", "3", "4") and trials[0] == "2" and trials[-1] == "3"


def test_no_network_resource(report) -> None:
    html = report.html.read_text()
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html
    # in-page anchors, and the worst images' thumbnails embedded as data: URIs (no file, no network)
    assert not re.search(r"""\b(src|href)\s*=\s*["'](?!#|data:image/jpeg;base64,)""", html), "a link out"
    assert 'src="data:image/jpeg;base64,' in html


def test_model_files_read_defensively(report) -> None:
    model = report.html.read_text().split('<section id="model">')[1]
    assert "verification.max_abs_diff" in model and "2.5e-06" in model
    assert "quantization.accuracy_drop" in model and "(20 in all)" in model
    assert "model.int8.json" in model and "could not read model.int8.json" in model


def test_pngs_beside_the_report(report) -> None:
    assert {p.name for p in report.pngs} == {f"{p.name}.png" for p in report.plots}
    for path in report.pngs:
        assert path.parent == report.html.parent / "report_plots"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plot_contents(report) -> None:
    plots = {p.name: p for p in report.plots}
    freezing = plots["plugin_comparison"].data["freezing"]
    assert sum(g["complete"] for g in freezing.values()) == 4
    assert (
        sum(g["pruned"] for g in freezing.values()) == 1 and sum(g["failed"] for g in freezing.values()) == 1
    )
    assert plots["plugin_comparison"].data["backbone"]["timm(test_resnet)"]["best"] == pytest.approx(0.99)
    curves = plots["learning_curves"].figure.axes[0]
    dashed = [line for line in curves.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and len(dashed[0].get_xdata()) == 1  # the pruned trial stops after one epoch
    time_front = plots["cost_tradeoff"].data["trial time (seconds)"]
    assert time_front[0] == 3 and 2 in time_front  # the fastest trial, and the best one, are on the front


def test_report_reads_right(report) -> None:
    """Issue 18's nits: the best trial's table names each plugin once; each plugin's best is its
    star, not also a dot under it (dots + stars = complete trials); Pareto points say "trial N",
    not "#N", which reads as a rank."""
    html = report.html.read_text()
    best = html[html.index("<h3>Best: trial") :].split("</table>")[0]
    assert best.count("<td>freezing</td>") == 1 and best.count("<td>head</td>") == 1
    plots = {p.name: p for p in report.plots}
    comparison = plots["plugin_comparison"]
    for ax in comparison.figure.axes:
        complete = sum(g["complete"] for g in comparison.data[ax.get_title()].values())
        assert sum(len(c.get_offsets()) for c in ax.collections) == complete, ax.get_title()
    labels = [t.get_text() for ax in plots["cost_tradeoff"].figure.axes for t in ax.texts]
    assert labels and all(re.fullmatch(r"trial \d+", label) for label in labels), labels


def test_pareto_front() -> None:
    points = [(1.0, 0.5, 0), (2.0, 0.4, 1), (3.0, 0.9, 2), (3.0, 0.7, 3), (5.0, 0.9, 4)]
    assert [n for *_, n in pareto_front(points, maximize=True)] == [0, 2]
    assert [n for *_, n in pareto_front(points, maximize=False)] == [0, 1]


def test_too_few_trials_and_storage_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    study = optuna.create_study(study_name="one", storage=url, direction="minimize")
    study.add_trial(
        create_trial(state=TrialState.COMPLETE, value=0.3, user_attrs={"history": [{"value": 0.3}]})
    )
    files = write_report(open_source(url), out=tmp_path / "one.html")
    html = files.html.read_text()
    assert "at least 2 complete trials" in html and "No exported model" in html
    assert "<svg" in html and 'id="leaderboard"' in html


def test_multi_objective_study_reports_on_its_first_objective(study_folder: Path, tmp_path: Path) -> None:
    """An accuracy-vs-latency study has no single ``value``: every plot uses the first objective."""
    real = next(t for t in open_source(study_folder).study.trials if t.state == TrialState.COMPLETE)
    url = f"sqlite:///{tmp_path / 'mo.db'}"
    study = optuna.create_study(study_name="mo", storage=url, directions=["maximize", "minimize"])
    for accuracy, latency in [(0.9, 12.0), (0.7, 3.0), (0.6, 9.0)]:
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                values=[accuracy, latency],
                params=real.params,
                distributions=real.distributions,
                user_attrs={**real.user_attrs, "latency_ms": latency},
            )
        )
    html = write_report(open_source(url), out=tmp_path / "mo.html").html.read_text()
    assert html.count("<svg") >= 4 and "0.9" in html


def test_cli_writes_report_and_pngs(study_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", str(study_folder), "--out", str(out), "--png"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and len(list((tmp_path / "r_plots").glob("*.png"))) == 5
    assert f"wrote {out}" in result.output


def test_cli_takes_the_study_file_and_the_folder_it_ran_in_as_status_does(
    study_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tlsearch report STUDY.yaml --out DIR`` as ``tlsearch status STUDY.yaml --out DIR``: DIR is
    the folder ``run`` made, the report goes into it. Bugs caught: that ``--out`` taken for the HTML
    file (refused as a folder); ``--out FILE.html`` with a study file read as a folder; a study file
    without ``--out`` not looked for in ``runs/<name>``."""
    study_file = study_folder.parent / "study.yaml"
    report_file = study_folder / "report.html"
    report_file.unlink(missing_ok=True)
    result = CliRunner().invoke(main, ["report", str(study_file), "--out", str(study_folder)])
    assert result.exit_code == 0, result.output
    assert f"wrote {report_file}" in result.output and 'id="leaderboard"' in report_file.read_text()
    status = CliRunner().invoke(main, ["status", str(study_file), "--out", str(study_folder), "--json"])
    assert status.exit_code == 0 and json.loads(status.output)["folder"] == str(
        study_folder
    )  # the same folder

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "r").symlink_to(study_folder)  # runs/<name>, where `run study.yaml` keeps it
    monkeypatch.chdir(tmp_path)
    html = tmp_path / "elsewhere" / "mine.html"
    result = CliRunner().invoke(main, ["report", str(study_file), "--out", str(html)])
    assert result.exit_code == 0, result.output
    assert f"wrote {html}" in result.output and html.is_file()


def test_cli_refuses_a_folder_as_the_html_file_and_a_study_file_whose_folder_is_not_there(
    study_folder: Path, tmp_path: Path
) -> None:
    """Bugs caught: a folder SOURCE's ``--out DIR`` taken as a study folder (or crashing on writing
    a file onto the folder); a study file's ``--out`` folder that does not exist not named."""
    result = CliRunner().invoke(main, ["report", str(study_folder), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "is a folder; --out is the HTML file here" in result.output
    missing = tmp_path / "never-ran"
    result = CliRunner().invoke(
        main, ["report", str(study_folder.parent / "study.yaml"), "--out", str(missing)]
    )
    assert result.exit_code == 2, result.output
    assert f"has no folder {str(missing)!r} yet" in result.output
