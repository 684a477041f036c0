"""Several workers, one study: the global budget of finished trials holds exactly."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from tests.postgres import postgres_url  # noqa: F401 - fixture
from tlsearch.cli import main
from tlsearch.search.budget import FINISHED, BudgetCallback, BudgetReached, wait_for_slot
from tlsearch.search.storage import make_storage
from tlsearch.search.workers import worker_env, worker_log

STORAGE_ERRORS = ("OperationalError", "IntegrityError", "database is locked", "DuplicatedStudyError")


def _states(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def _check_exact_budget(study: optuna.Study, budget: int, *, other_failures: bool = False) -> None:
    trials = study.get_trials(deepcopy=False)
    assert sum(t.state in FINISHED for t in trials) == budget, _states(study)
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    for t in trials:  # the only failures allowed are trials skipped because others filled the budget
        if t.state == optuna.trial.TrialState.FAIL and not other_failures:
            assert t.user_attrs.get("skipped"), t.user_attrs.get("failure")


def test_budget_is_exact_under_concurrency_with_failures(tmp_path):
    """8 threads on one journal race for a budget of 6 while a third of trials fail: exactly 6 finish."""
    storage = make_storage(str(tmp_path / "s.journal"))
    optuna.create_study(study_name="b", storage=storage)
    budget = 6

    def objective(trial: optuna.Trial) -> float:
        try:
            wait_for_slot(trial.study, trial, budget=budget, poll=0.02)
        except BudgetReached:
            trial.set_user_attr("skipped", True)
            trial.study.stop()
            raise
        time.sleep(random.uniform(0.01, 0.08))
        if random.random() < 0.33:
            raise RuntimeError("flaky trial")
        return trial.suggest_float("x", 0, 1)

    def worker() -> None:
        study = optuna.load_study(study_name="b", storage=storage)
        study.optimize(objective, catch=(Exception,), callbacks=[BudgetCallback(budget)])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    _check_exact_budget(optuna.load_study(study_name="b", storage=storage), budget, other_failures=True)


def test_worker_env_pins_one_gpu_each_or_shares_cpu_threads():
    env = worker_env(3, 4, gpus=["0", "1"], base={})
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["TLSEARCH_WORKER_RANK"] == "3"
    env = worker_env(0, 2, gpus=[], base={})
    assert "CUDA_VISIBLE_DEVICES" not in env and int(env["OMP_NUM_THREADS"]) >= 1


@pytest.fixture
def small_study(write_study):
    return write_study(
        training={"epochs": 1}, search={"n_trials": 4, "pruner": "none"}, space={"freezing": ["linear_probe"]}
    )


def test_local_workers_on_the_embedded_journal_finish_exactly_the_budget(small_study, tmp_path):
    """``tlsearch run --workers 3``: the budget holds, and the one console shows every worker's trials
    (read from the study) while each worker's own output goes to its log."""
    out = tmp_path / "out"
    cli = CliRunner().invoke(
        main, ["run", str(small_study), "--out", str(out), "--workers", "3", "--console", "plain"]
    )
    assert cli.exit_code == 0, cli.output
    assert (out / "study.journal").is_file()
    study = optuna.load_study(study_name="tiny", storage=make_storage(str(out / "study.journal")))
    _check_exact_budget(study, 4)
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    for t in finished:
        assert (out / "trials" / f"{t.number:04d}" / "model.safetensors").is_file()
        assert f"trial {t.number}: timm(test_efficientnet) @32px + linear | linear_probe" in cli.output
        seconds = (t.datetime_complete - t.datetime_start).total_seconds()  # its own, not the poll's
        assert f"trial {t.number} {t.state.name.lower()} after {seconds:.1f}s" in cli.output
    assert "[4/4]" in cli.output and " epoch 1: accuracy" in cli.output
    epoch_lines = [line for line in cli.output.splitlines() if " epoch " in line]
    assert epoch_lines and all(line.startswith("  trial ") for line in epoch_lines)  # whose epoch it is
    assert f"workers' own output: {out / 'logs'}/worker-<rank>.log" in cli.output
    logs = [worker_log(out, rank).read_text() for rank in range(3)]
    ran = [line for text in logs for line in text.splitlines() if " complete " in line or " pruned " in line]
    assert len(ran) == 4 and all(line.startswith("[worker ") for line in ran)


@pytest.mark.postgres
def test_three_workers_on_postgres_finish_exactly_the_budget(small_study, postgres_url, tmp_path):  # noqa: F811
    out = tmp_path / "shared"
    cmd = [
        sys.executable,
        "-m",
        "tlsearch",
        "worker",
        str(small_study),
        "--storage",
        postgres_url,
        "--out",
        str(out),
    ]
    procs = [
        subprocess.Popen(
            cmd, env=worker_env(i, 3, gpus=[]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(3)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert not [e for e in STORAGE_ERRORS if e in err], err[-3000:]
    study = optuna.load_study(study_name="tiny", storage=make_storage(postgres_url))
    _check_exact_budget(study, 4)
    workers = {t.user_attrs["worker"]["pid"] for t in study.get_trials(deepcopy=False)}
    assert workers <= {p.pid for p in procs}
    assert Path(out, "study.json").is_file()
