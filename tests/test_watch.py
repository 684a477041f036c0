"""The study watcher turns what other processes write to a study into search events, each once."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from tlsearch.search.watch import StudyWatcher

CHOICES = {"backbone": "timm", "head": "linear", "freezing": "linear_probe", "train.lr": 0.01}


def _watched() -> tuple[optuna.Study, StudyWatcher, list[tuple]]:
    study = optuna.create_study(direction="maximize")
    events: list[tuple] = []

    def on_event(name: str, **kw) -> None:
        detail = {k: v for k, v in kw.items() if k != "trial"}
        events.append((name, kw["trial"].number, detail))
        assert kw["trial"].study is study

    return study, StudyWatcher(study, on_event), events


def test_a_trial_of_another_process_becomes_start_epochs_and_end() -> None:
    study, watcher, events = _watched()
    trial = study.ask()
    watcher.poll()
    assert events == []  # running, but not sampled yet: nothing to show
    trial.set_user_attr("choices", CHOICES)
    watcher.poll()
    assert events == [("trial_start", 0, {"choices": CHOICES})]
    trial.set_user_attr("history", [{"accuracy": 0.5}])
    watcher.poll()
    trial.set_user_attr("history", [{"accuracy": 0.5}, {"accuracy": 0.7}, {"accuracy": 0.8}])
    trial.set_user_attr("metrics", {"accuracy": 0.8})
    watcher.poll()
    study.tell(trial, 0.8)
    watcher.poll()
    watcher.poll()  # nothing new: nothing emitted twice
    assert [(name, epoch) for name, _, d in events[1:] for epoch in [d.get("epoch")]] == [
        ("epoch_end", 0),
        ("epoch_end", 1),
        ("epoch_end", 2),
        ("trial_end", None),
    ]
    assert events[1][2]["metrics"] == {"accuracy": 0.5} and events[3][2]["metrics"] == {"accuracy": 0.8}
    assert events[-1] == ("trial_end", 0, {"state": "COMPLETE", "value": 0.8, "metrics": {"accuracy": 0.8}})


def test_a_trial_that_ran_and_ended_between_two_looks_is_reported_whole_and_in_order() -> None:
    study, watcher, events = _watched()
    watcher.poll()
    pruned = study.ask()
    pruned.set_user_attr("choices", CHOICES)
    pruned.set_user_attr("history", [{"accuracy": 0.2}])
    study.tell(pruned, state=TrialState.PRUNED)
    failed = study.ask()
    failed.set_user_attr("choices", CHOICES)
    failed.set_user_attr("failure", "plugin: RuntimeError: boom")
    study.tell(failed, state=TrialState.FAIL)
    watcher.poll()
    assert [(name, number) for name, number, _ in events] == [
        ("trial_start", 0),
        ("epoch_end", 0),
        ("trial_end", 0),
        ("trial_start", 1),
        ("trial_end", 1),
    ]
    assert events[2][2] == {"state": "PRUNED", "value": None, "metrics": {"accuracy": 0.2}}
    assert events[4][2] == {
        "state": "FAIL",
        "value": None,
        "metrics": {"failure": "plugin: RuntimeError: boom"},
    }


def test_trials_ended_before_the_first_look_and_unsampled_failures_are_not_news() -> None:
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    events: list[str] = []
    watcher = StudyWatcher(study, lambda name, **kw: events.append(name))
    watcher.poll()
    skipped = study.ask()  # e.g. a trial skipped because the budget was full: it never sampled
    skipped.set_user_attr("skipped", True)
    study.tell(skipped, state=TrialState.FAIL)
    watcher.poll()
    assert events == []
