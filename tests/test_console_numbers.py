"""The console's numbers are true with several workers: a trial's duration from its own record,
every epoch line with its trial, time left from an honest estimate or not at all."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from tlsearch.cli.console import Console, time_left, trial_seconds
from tlsearch.search.watch import StudyWatcher

CHOICES = {"backbone": "timm", "backbone.timm.model": "test_efficientnet", "head": "linear",
           "freezing": "linear_probe", "train.lr": 0.001}  # fmt: skip


def _finished_trial(number: int, seconds: float, value: float) -> FrozenTrial:
    start = datetime.now() - timedelta(seconds=seconds + 5)
    return FrozenTrial(
        number=number,
        trial_id=number,
        state=TrialState.COMPLETE,
        value=value,
        datetime_start=start,
        datetime_complete=start + timedelta(seconds=seconds),
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs={"choices": CHOICES, "history": [{"accuracy": 0.5}, {"accuracy": value}]},
        system_attrs={},
        intermediate_values={},
    )


def test_trial_seconds_come_from_the_trials_own_start_and_complete():
    trial = _finished_trial(0, 38.0, 0.9)
    assert trial_seconds(trial) == 38.0
    assert trial_seconds(object()) is None  # no start known: no figure rather than a wrong one
    start = datetime(2026, 1, 1, 12, 0, 0)
    assert trial_seconds(object(), started=start, now=start + timedelta(seconds=7)) == 7.0


def test_a_trial_that_ran_between_two_looks_shows_its_real_duration_and_trial_number():
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("metric", "accuracy")
    out = io.StringIO()
    console = Console(total=3, epochs=2, mode="plain", stream=out)
    watcher = StudyWatcher(study, console.event)
    watcher.poll()
    study.add_trial(_finished_trial(0, 38.0, 0.9))  # started and ended between two polls
    watcher.poll()
    text = out.getvalue()
    assert "trial 0 complete after 38.0s value 0.9 [1/3]" in text  # not "after 0.0s"
    assert "  trial 0 epoch 1: accuracy 0.5" in text and "  trial 0 epoch 2: accuracy 0.9" in text
    assert console.durations == [38.0]  # counted from the study (it ended before the console saw it)
    study.add_trial(_finished_trial(1, 20.0, 0.8))
    watcher.poll()
    last = out.getvalue().splitlines()[-1]
    assert last == "trial 1 complete after 20.0s value 0.8 [2/3], about 29s left"  # the mean of 38 and 20


def test_time_left_extrapolates_a_running_trial_at_its_own_pace():
    # two 10 s probes done, a fine-tune 60 s into its first of 3 epochs... then with one epoch done
    assert time_left(total=3, finished=2, durations=[10, 10], running=[(60.0, 0, 3)]) is None
    assert time_left(total=3, finished=2, durations=[10, 10], running=[(60.0, 1, 3)]) == 120.0
    assert time_left(total=3, finished=2, durations=[10, 10], running=[(4.0, 0, 3)]) == 6.0


def test_time_left_counts_queued_trials_over_the_running_workers():
    # 6 of 10 done (mean 10 s), two workers each 5 s into a trial: (5 + 5 + 2 × 10) / 2
    assert time_left(total=10, finished=6, durations=[10] * 6, running=[(5, 0, 3), (5, 0, 3)]) == 15.0
    assert time_left(total=4, finished=0, durations=[], running=[(3, 0, 3)]) is None  # no trial timed yet
    assert time_left(total=2, finished=2, durations=[10, 10], running=[]) == 0.0


def test_the_console_shows_no_time_left_while_a_long_trial_outruns_the_mean():
    out = io.StringIO()
    console = Console(total=3, epochs=3, mode="plain", stream=out)
    console.durations = [10.0, 10.0]
    console.counted = {0, 1}
    console.seeded = True
    console.trial_started[2] = datetime.now() - timedelta(seconds=60)
    console.current[2] = {"summary": "", "epoch": 0, "metrics": {}, "epochs": 3}
    assert console.eta() is None  # not "about 0s left" for the whole fine-tune
    console.current[2]["epoch"] = 1
    assert 110 < console.eta() < 130


def test_export_shows_a_line_while_it_works():
    out = io.StringIO()
    console = Console(mode="plain", stream=out)
    with console.working("exporting the best trial to ONNX"):
        assert out.getvalue() == "exporting the best trial to ONNX…\n"
