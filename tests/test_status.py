"""``tlsearch status`` and :func:`tlsearch.report.study_status` on studies built trial by trial."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import click
import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tlsearch.cli import main
from tlsearch.config import load_config
from tlsearch.errors import ConfigError
from tlsearch.report import format_status, leaderboard, study_status
from tlsearch.search import StudyDir
from tlsearch.search.storage import make_storage

YAML = """
name: s
data: {train: shapes/train, val: shapes/val, image_size: 32}
space:
  backbone: {timm: {model: test_efficientnet, weights: random}}
  head: [linear]
  freezing: [linear_probe, full_finetune]
training: {epochs: 3, batch_size: 16}
search: {n_trials: 10, seed: 0}
export: {enabled: false}
"""

DISTRIBUTIONS = {
    "freezing": CategoricalDistribution(["linear_probe", "full_finetune"]),
    "train.lr": FloatDistribution(1e-4, 1e-1, log=True),
}


def _choices(freezing: str, lr: float) -> dict:
    return {
        "backbone": "timm",
        "backbone.timm.model": "test_efficientnet",
        "head": "linear",
        "freezing": freezing,
        "train.lr": lr,
    }


def add(
    study: optuna.Study,
    state: TrialState,
    *,
    value: float | None = None,
    freezing: str = "linear_probe",
    lr: float = 1e-3,
    seconds: float = 10.0,
    history: list[float] = (),
    failure: str | None = None,
) -> None:
    attrs = {
        "choices": _choices(freezing, lr),
        "seconds": seconds,
        "params": 1000,
        "history": [{"accuracy": h, "epoch_seconds": 1.0} for h in history],
    }
    if failure:
        attrs["failure"] = failure
    study.add_trial(
        create_trial(
            state=state,
            value=value,
            params={"freezing": freezing, "train.lr": lr},
            distributions=DISTRIBUTIONS,
            user_attrs=attrs,
            intermediate_values={i: h for i, h in enumerate(history)},
        )
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A study folder (study.json + SQLite) with 3 complete, 1 pruned, 2 failed and 1 running trial."""
    for split in ("train", "val"):
        (tmp_path / "shapes" / split).mkdir(parents=True)
    (tmp_path / "study.yaml").write_text(YAML)
    config = load_config(tmp_path / "study.yaml")
    study_dir = StudyDir(tmp_path / "run")
    study_dir.save_config(config)
    study = optuna.create_study(
        study_name="s", storage=make_storage(study_dir.storage(config)), direction="maximize"
    )
    study.set_user_attr("metric", "accuracy")
    add(study, TrialState.COMPLETE, value=0.5, history=[0.3, 0.4, 0.5], seconds=10)
    add(
        study,
        TrialState.COMPLETE,
        value=0.9,
        freezing="full_finetune",
        lr=0.01,
        history=[0.5, 0.8, 0.9],
        seconds=20,
    )
    add(study, TrialState.PRUNED, history=[0.2], seconds=5)
    add(study, TrialState.FAIL, failure="RuntimeError: CUDA out of memory", seconds=3)
    add(study, TrialState.FAIL, seconds=2)
    add(study, TrialState.COMPLETE, value=0.7, history=[0.6, 0.65, 0.7], seconds=30)
    study.add_trial(
        create_trial(state=TrialState.RUNNING, user_attrs={"choices": _choices("linear_probe", 1e-3)})
    )
    return study_dir.root


def test_counts_best_failures_and_eta(folder: Path) -> None:
    status = study_status(folder)
    assert status["counts"] == {"complete": 3, "pruned": 1, "failed": 2, "running": 1, "waiting": 0}
    assert status["finished"] == 4 and status["budget"] == 10 and status["remaining"] == 6
    assert status["metric"] == "accuracy" and status["direction"] == "maximize"
    assert [f["trial"] for f in status["failures"]] == [3, 4]
    assert status["failures"][0]["reason"] == "RuntimeError: CUDA out of memory"
    assert "no reason" in status["failures"][1]["reason"]
    best = status["best"]
    assert best["trial"] == 1 and best["value"] == pytest.approx(0.9)
    assert best["plugins"]["freezing"] == "full_finetune"
    assert best["optuna_params"] == {"freezing": "full_finetune", "train.lr": 0.01}
    assert status["time"]["trials_seconds"] == pytest.approx(70.0)
    # 70 s of trial time bought 4 finished trials: 17.5 s each, 6 to go, 1 running (just started)
    assert status["eta_seconds"] == pytest.approx(6 * 17.5, abs=1.0)
    assert [r["trial"] for r in status["running"]] == [6]


def test_no_time_left_is_shown_while_a_trial_outruns_the_mean(folder: Path) -> None:
    """Bug caught: "about 1m27s left" (or "0s left") for a trial that has run an hour, 17.5 s being
    the mean: an honest status shows no figure until that trial ends or reports an epoch."""
    later = dt.datetime.now() + dt.timedelta(hours=1)
    status = study_status(folder, now=later)
    assert status["running"][0]["seconds"] > 3000
    assert status["eta_seconds"] is None
    assert "left for" not in format_status(status)


def test_leaderboard_orders_by_direction(folder: Path) -> None:
    study = optuna.load_study(study_name="s", storage=make_storage(str(folder / "study.journal")))
    assert [r["trial"] for r in leaderboard(study)] == [1, 5, 0]
    assert [r["rank"] for r in leaderboard(study, top=2)] == [1, 2]


def test_text_names_best_and_failures(folder: Path) -> None:
    text = format_status(study_status(folder))
    assert "4/10 finished" in text and "2 failed" in text
    assert "best: trial 1" in text and "full_finetune" in text
    assert "CUDA out of memory" in text and "left for 6 trial(s)" in text


def test_cli_json_from_folder_and_storage(folder: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["status", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["counts"]["complete"] == 3 and status["counts"]["failed"] == 2
    url = str(folder / "study.journal")
    result = runner.invoke(main, ["status", url, "--study", "s", "--json"])
    assert result.exit_code == 0, result.output
    by_url = json.loads(result.stdout)
    assert by_url["counts"] == status["counts"] and by_url["budget"] is None and by_url["eta_seconds"] is None
    result = runner.invoke(main, ["status", url])
    assert result.exit_code == 0 and "best: trial 1" in result.output


def test_sqlite_url_unknown_study_and_bad_source(folder: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    for name in ("s", "other"):
        optuna.create_study(study_name=name, storage=url)
    assert study_status(url, study_name="s")["counts"]["complete"] == 0
    with pytest.raises(ConfigError, match="holds 2 studies"):
        study_status(url)
    with pytest.raises(ConfigError, match="no study 'nope'.*s, other"):
        study_status(url, study_name="nope")
    with pytest.raises(ConfigError, match="not a tlsearch study folder"):
        study_status(tmp_path)
    result = CliRunner().invoke(main, ["status", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "neither a study folder nor a storage" in result.output


@pytest.mark.timeout(120)  # a watch that never sees the budget done would follow forever
def test_watch_follows_other_workers_trials_until_the_budget_is_done(folder: Path, monkeypatch) -> None:
    """``status --watch`` from another process's view: a worker ends the running trial and runs the
    six still missing from the budget of 10; the watch shows each and returns when the budget is done."""
    from tlsearch.search.watch import StudyWatcher

    worker_study = optuna.load_study(study_name="s", storage=make_storage(str(folder / "study.journal")))
    watching = threading.Event()
    first_look = StudyWatcher.poll

    def poll(self):
        trials = first_look(self)
        watching.set()
        return trials

    monkeypatch.setattr(StudyWatcher, "poll", poll)

    def worker() -> None:
        assert watching.wait(timeout=60)  # the watch has had its first look: what follows is news
        running = worker_study.get_trials(states=(TrialState.RUNNING,))[0]
        worker_study._storage.set_trial_user_attr(running._trial_id, "failure", "worker lost")
        worker_study._storage.set_trial_state_values(running._trial_id, TrialState.FAIL)
        for i in range(6):
            trial = worker_study.ask(
                {"freezing": DISTRIBUTIONS["freezing"], "train.lr": DISTRIBUTIONS["train.lr"]}
            )
            trial.set_user_attr("choices", _choices(trial.params["freezing"], trial.params["train.lr"]))
            trial.set_user_attr("history", [{"accuracy": 0.1 * i, "epoch_seconds": 0.1}])
            worker_study.tell(trial, 0.1 * i)

    thread = threading.Thread(target=worker)
    thread.start()
    result = CliRunner().invoke(main, ["status", str(folder), "--watch", "--console", "plain"])
    thread.join()
    assert result.exit_code == 0, result.output
    out = result.output
    assert "trial 6: timm(test_efficientnet) + linear | linear_probe" in out and "trial 6 fail after" in out
    assert "worker lost" in out
    for number in range(7, 13):
        assert f"trial {number} complete after" in out
    assert "[10/10]" in out and "10/10 finished" in out


def test_watch_and_json_are_refused_together(folder: Path) -> None:
    with pytest.raises(click.UsageError, match="--watch and --json"):
        main.main(["status", str(folder), "--watch", "--json"], standalone_mode=False)
