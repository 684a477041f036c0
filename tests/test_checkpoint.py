"""The wiring between a study's trials and their checkpoints: a resumed study never trains a finished
trial again, and export refuses a checkpoint that is not the trial's own."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import save_model

from tlsearch.search import export_study, run_study
from tlsearch.search.checkpoint import RECORD_FILE, WEIGHTS_FILE, CheckpointError
from tlsearch.testing import tiny_transfer_model

FAST = {"training": {"epochs": 1}, "space": {"freezing": ["linear_probe"]}, "search": {"pruner": "none"}}


def _run(study: Path, out: Path, n_trials: int) -> Counter[int]:
    """Run the study to ``n_trials`` finished trials; how many epochs each trial number trained."""
    epochs: Counter[int] = Counter()

    def on_event(name: str, **kw: Any) -> None:
        if name == "epoch_end":
            epochs[kw["trial"].number] += 1

    run_study(study, out_dir=out, n_trials=n_trials, progress=False, on_event=on_event)
    return epochs


def test_a_resumed_study_never_trains_a_finished_trial_again(write_study, tmp_path: Path) -> None:
    study, out = write_study(**FAST), tmp_path / "out"
    assert _run(study, out, 2) == {0: 1, 1: 1}
    finished = {n: (out / "trials" / f"{n:04d}" / WEIGHTS_FILE).read_bytes() for n in (0, 1)}
    assert _run(study, out, 3) == {2: 1}  # only the missing trial trains
    assert _run(study, out, 3) == {}  # budget reached: nothing trains
    for n, weights in finished.items():
        assert (out / "trials" / f"{n:04d}" / WEIGHTS_FILE).read_bytes() == weights


@pytest.fixture
def finished_study(write_study, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    run_study(
        write_study(**{**FAST, "search": {"pruner": "none", "n_trials": 1}}), out_dir=out, progress=False
    )
    return out


def _edit_record(out: Path, **changes: Any) -> None:
    file = out / "trials" / "0000" / RECORD_FILE
    record = json.loads(file.read_text())
    for key, value in changes.items():
        record[key] = value(record[key]) if callable(value) else value
    file.write_text(json.dumps(record))


def test_export_refuses_a_checkpoint_of_another_trial(finished_study: Path) -> None:
    _edit_record(finished_study, number=5)
    with pytest.raises(CheckpointError, match="is trial 5's, not trial 0's"):
        export_study(finished_study)
    assert not (finished_study / "model.onnx").exists()


def test_export_refuses_a_checkpoint_whose_choices_are_not_the_trials(finished_study: Path) -> None:
    _edit_record(finished_study, choices=lambda c: {**c, "train.lr": c["train.lr"] * 2})
    with pytest.raises(CheckpointError, match=r"does not match trial 0.*\['train\.lr'\]"):
        export_study(finished_study)
    assert not (finished_study / "model.onnx").exists()


def test_export_refuses_weights_of_another_architecture(finished_study: Path) -> None:
    save_model(tiny_transfer_model(num_outputs=4), str(finished_study / "trials" / "0000" / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*do not fit the model of trial 0"):
        export_study(finished_study)
    assert not (finished_study / "model.onnx").exists()
