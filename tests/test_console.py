"""The run's console: plain lines without control characters off a terminal, rich's live view on one."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner

from tlsearch.cli import main
from tlsearch.cli.console import Console, choose_mode
from tlsearch.demo import make_shapes

YAML = """
name: c
data: {train: shapes/train, val: shapes/val, image_size: 32}
space:
  backbone: {timm: {model: test_efficientnet, weights: random}}
  head: [linear]
  freezing: [linear_probe]
training: {epochs: 2, batch_size: 16}
search: {n_trials: 2, seed: 0}
export: {enabled: false}
"""
CHOICES = {
    "backbone": "timm",
    "backbone.timm.model": "test_efficientnet",
    "head": "linear",
    "freezing": "linear_probe",
    "train.lr": 0.001,
}


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_mode_follows_terminal_and_overrides() -> None:
    assert choose_mode(stream=_Stream(True), environ={"TERM": "xterm"}) == "live"
    assert choose_mode(stream=_Stream(False), environ={"TERM": "xterm"}) == "plain"
    assert choose_mode(stream=_Stream(True), environ={"TERM": "dumb"}) == "plain"
    assert (
        choose_mode(stream=_Stream(True), environ={"TERM": "xterm", "TLSEARCH_CONSOLE": "plain"}) == "plain"
    )
    assert choose_mode("live", stream=_Stream(False), environ={}) == "live"
    with pytest.raises(click.BadParameter, match="'fancy'.*auto, live, plain"):
        choose_mode(stream=_Stream(True), environ={"TLSEARCH_CONSOLE": "fancy"})


def _events(console: Console) -> None:
    for number, value in ((0, 0.5), (1, 0.8), (2, None)):
        trial = SimpleNamespace(number=number, study=None)
        console.event("trial_start", trial=trial, choices={**CHOICES, "train.lr": 0.001 * (number + 1)})
        console.event("epoch_end", trial=trial, epoch=0, metrics={"value": 0.4, "epoch_seconds": 0.1})
        state = "COMPLETE" if value is not None else "FAIL"
        console.event(
            "trial_end",
            trial=trial,
            state=state,
            value=value,
            metrics={"value": value} if value is not None else {"failure": "ValueError: nan"},
        )


def test_plain_lines_count_trials_and_eta() -> None:
    out = _Stream(True)
    with Console(total=4, epochs=1, mode="plain", stream=out) as console:
        _events(console)
    text = out.getvalue()
    assert (
        "trial 0: timm(test_efficientnet) + linear" in text and "  trial 0 epoch 1: value 0.4" in text
    )  # epochs count from 1
    assert "trial 1 complete after" in text and "value 0.8 [2/4], about" in text and "left" in text
    assert "trial 2 fail after" in text and "ValueError: nan [2/4]" in text
    assert "\x1b" not in text and "\r" not in text
    assert [r.number for r in console.leaders()] == [1, 0]


def test_work_outside_trials_prints_its_start_quarters_and_end() -> None:
    out = _Stream(False)
    with Console(total=2, mode="plain", stream=out) as console:
        for done in range(0, 101, 10):
            console.event("progress", task="decoding train images at 64px", done=done, total=100)
    lines = out.getvalue().splitlines()
    assert lines[0] == "decoding train images at 64px: 100 to do"
    assert lines[1:4] == [
        f"decoding train images at 64px: {d}/100" for d in (30, 50, 80)
    ]  # first past each quarter
    assert lines[4].startswith("decoding train images at 64px: done in ") and len(lines) == 5
    assert console.work == {} and console.finished == 0


def test_live_view_shows_progress_and_leaders() -> None:
    out = _Stream(False)  # not a terminal: rich prints the final frame once, which we can read
    with Console(total=4, epochs=1, mode="live", stream=out) as console:
        assert console.live
        _events(console)
        console.event("progress", task="ranking 3 backbone candidate(s) by logme", done=1, total=3)
    text = out.getvalue()
    assert "ranking 3 backbone candidate(s) by logme" in text and "1/3" in text
    assert "trials" in text and "2/4" in text
    assert "top 2 by value" in text and "0.8000" in text and "0.5000" in text
    assert text.index("0.8000") < text.index("0.5000")


def test_run_off_terminal_has_no_escape_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_shapes(tmp_path / "shapes", per_class=6, val_per_class=3, size=32)
    (tmp_path / "study.yaml").write_text(YAML)
    monkeypatch.delenv("TLSEARCH_CONSOLE", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")  # a colour terminal type, but the output is not a tty
    result = CliRunner().invoke(main, ["run", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\r" not in result.output
    assert "trial 0: timm(test_efficientnet) @32px + linear | linear_probe" in result.output
    assert "decoding train images at 32px: 24 to do" in result.output  # 4 shapes × 6 images
    assert "decoding val images at 32px: done in" in result.output
    assert "  trial 1 epoch 1: accuracy" in result.output and "[2/2]" in result.output
    assert "study c: 2 complete" in result.output and "#1  trial" in result.output


def test_a_trial_the_study_already_counted_counts_once() -> None:
    """A watcher may report a trial that ended just as the console read the study: no double count."""
    import optuna

    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: 0.6, n_trials=1)
    with Console(total=3, mode="plain", stream=_Stream(False)) as console:
        running = SimpleNamespace(number=1, study=study)
        console.event("trial_start", trial=running, choices=CHOICES)  # reads the study: trial 0 is done
        console.event(
            "trial_end", trial=SimpleNamespace(number=0, study=study), state="COMPLETE", value=0.6, metrics={}
        )
        console.event("trial_end", trial=running, state="COMPLETE", value=0.7, metrics={})
    assert console.finished == 2
    assert [r.number for r in console.leaders()] == [1, 0]
