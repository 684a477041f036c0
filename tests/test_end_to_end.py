"""The whole path on CPU: a study of real (tiny) fine-tuning trials, resume, export with parity, predict.

A recording plugin implements every hook; the test checks each was called as documented
(``test_registry`` checks that the recorder covers every hook in hookspecs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from click.testing import CliRunner

from tlsearch.cli import main
from tlsearch.registry import get_plugin_manager
from tlsearch.search import load_checkpoint, run_study

RECORDER = '''
"""Records every hook call to <out_dir>/recorded.jsonl (export_done: next to the model)."""
import json, os
from pathlib import Path
from torch import nn
from tlsearch import hookimpl
from tlsearch.kinds import Backbone, FreezingStrategy, Head, Regularizer

def _log(folder, **record):
    with open(Path(folder) / "recorded.jsonl", "a") as f:
        f.write(json.dumps(record, default=str) + "\\n")

class RecordedHead(Head):
    """A head registered by the recorder."""
    name = "recorded_head"
    def build(self, in_features, out_features):
        return nn.Linear(in_features, out_features)

class RecordedFreezing(FreezingStrategy):
    """Everything trains."""
    name = "recorded_freezing"
    def setup(self, model):
        from tlsearch.kinds import ParamGroup
        return [ParamGroup("all", list(model.parameters()))]

class RecordedRegularizer(Regularizer):
    """Does nothing."""
    name = "recorded_regularizer"

class RecordedBackbone(Backbone):
    """Never built."""
    name = "recorded_backbone"
    def build(self, **options):
        raise NotImplementedError

@hookimpl
def tlsearch_register_backbones(register):
    register.add(RecordedBackbone)

@hookimpl
def tlsearch_register_heads(register):
    register.add(RecordedHead)

@hookimpl
def tlsearch_register_freezing_strategies(register):
    register.add(RecordedFreezing)

@hookimpl
def tlsearch_register_regularizers(register):
    register.add(RecordedRegularizer)

@hookimpl
def tlsearch_study_start(study, config, out_dir):
    _log(out_dir, hook="study_start", study=study.study_name, config=config.name)

@hookimpl
def tlsearch_trial_start(trial, choices, out_dir):
    _log(out_dir, hook="trial_start", trial=trial.number, head=choices["head"])

@hookimpl
def tlsearch_epoch_end(trial, epoch, metrics, out_dir):
    _log(out_dir, hook="epoch_end", trial=trial.number, epoch=epoch, metrics=metrics)

@hookimpl
def tlsearch_trial_end(trial, state, value, metrics, out_dir):
    _log(out_dir, hook="trial_end", trial=trial.number, state=state, value=value)

@hookimpl
def tlsearch_study_end(study, out_dir):
    _log(out_dir, hook="study_end", study=study.study_name)

@hookimpl
def tlsearch_export_done(path, metadata):
    _log(Path(path).parent, hook="export_done", path=path, value=metadata["value"])
'''

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path):
    """One study of 3 trials (tiny timm model, random weights, 32 px), exported, shared by the tests below."""
    import yaml

    from tests.conftest import TINY_STUDY, _merge

    root = tmp_path_factory.mktemp("e2e")
    (root / "recorder.py").write_text(RECORDER)
    study = _merge(
        TINY_STUDY,
        {
            "data": {"train": str(shapes_dir / "train"), "val": str(shapes_dir / "val")},
            "space": {"head": ["linear", "recorded_head"]},
            "plugins": ["recorder.py"],
            "export": {"enabled": True},
        },
    )
    (root / "study.yaml").write_text(yaml.safe_dump(study))
    out = root / "out"
    result = CliRunner().invoke(
        main, ["run", str(root / "study.yaml"), "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return root, out, result.output


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "recorded.jsonl").read_text().splitlines()]


def _study(out: Path) -> optuna.Study:
    from tlsearch.search import StudyDir
    from tlsearch.search.storage import make_storage

    return optuna.load_study(study_name="tiny", storage=make_storage(StudyDir(out).default_storage))


def test_trials_complete_with_their_attributes(finished) -> None:
    _, out, output = finished
    study = _study(out)
    assert len(study.trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for t in study.trials:
        attrs = t.user_attrs
        assert attrs["choices"]["backbone"] == "timm"
        assert attrs["plugins"]["freezing"] in {"linear_probe", "full_finetune"}
        # a solved probe ends once it has converged; every other trial runs its 2 epochs
        assert len(attrs["history"]) == 2 or attrs.get("stopped") == "converged"
        assert 0.0 <= attrs["metrics"]["accuracy"] <= 1.0
        assert (
            attrs["params"] > attrs["trainable_params"] > 0 or attrs["plugins"]["freezing"] == "full_finetune"
        )
        assert attrs["seconds"] > 0
        assert t.value == pytest.approx(attrs["metrics"]["accuracy"])
        assert any(k.startswith("freezing") for k in t.params)  # namespaced Optuna parameters
        assert (out / "trials" / f"{t.number:04d}" / "model.safetensors").is_file()
    assert "trial 2" in output and "exported" in output


def test_every_lifecycle_hook_was_called(finished) -> None:
    _, out, _ = finished
    records = _records(out)
    hooks = [r["hook"] for r in records]
    assert hooks.count("study_start") == 1 and hooks.count("study_end") == 1
    assert hooks.count("trial_start") == 3 and hooks.count("trial_end") == 3
    # one per epoch run: 2 per trial, 1 for a solved probe that converged in its first
    ran = [len(t.user_attrs["history"]) for t in _study(out).trials]
    assert hooks.count("epoch_end") == sum(ran) and set(ran) <= {1, 2}
    assert hooks.count("export_done") == 1
    epoch = next(r for r in records if r["hook"] == "epoch_end")
    assert {"accuracy", "val_loss", "train_loss"} <= set(epoch["metrics"])
    best = _study(out).best_value
    assert next(r for r in records if r["hook"] == "export_done")["value"] == pytest.approx(best)
    registry = get_plugin_manager([out.parent / "recorder.py"]).registry
    for kind, name in [
        ("backbone", "recorded_backbone"),
        ("head", "recorded_head"),
        ("freezing", "recorded_freezing"),
        ("regularizer", "recorded_regularizer"),
    ]:
        assert name in registry.names(kind)


def test_checkpoint_reproduces_the_recorded_metric(finished) -> None:
    from tlsearch.data import decode_images, scan_folder
    from tlsearch.train.metrics import evaluate_outputs

    _, out, _ = finished
    best = _study(out).best_trial
    model, record = load_checkpoint(
        out / "trials" / f"{best.number:04d}", get_plugin_manager([out.parent / "recorder.py"]).registry
    )
    val = scan_folder(
        Path(json.loads((out / "study.json").read_text())["config"]["data"]["val"]), classes=record.labels
    )
    images = decode_images(val, record.preprocessing, progress=False)
    from tlsearch.data import normalize

    with torch.no_grad():
        x = normalize(torch.from_numpy(images.images).permute(0, 3, 1, 2), record.preprocessing)
        metrics = evaluate_outputs(model(x), torch.from_numpy(images.targets), task="classification")
    assert metrics["accuracy"] == pytest.approx(best.value)


def test_rerun_resumes_instead_of_starting_over(finished) -> None:
    root, out, _ = finished
    before = {t.number: (t.params, t.value) for t in _study(out).trials}
    result = run_study(root / "study.yaml", out_dir=out, n_trials=4, progress=False)
    after = result.study.trials
    assert len(after) == 4
    assert {t.number: (t.params, t.value) for t in after if t.number in before} == before
    result = run_study(root / "study.yaml", out_dir=out, n_trials=4, progress=False)
    assert len(result.study.trials) == 4  # budget reached: nothing more runs


def test_exported_model_matches_pytorch_and_predict_agrees(finished) -> None:
    from tlsearch.deploy import Predictor

    root, out, _ = finished
    model_file = out / "model.onnx"
    described = json.loads((out / "model.json").read_text())
    assert described["verification"]["max_abs_diff"] <= 1e-4
    meta = described["metadata"]
    assert meta["labels"] == ["circle", "square", "star", "triangle"]
    assert meta["data_config"]["input_size"] == 32
    files = sorted(
        (Path(json.loads((out / "study.json").read_text())["config"]["data"]["val"])).rglob("*.png")
    )
    predictions = Predictor(model_file).predict(files, top_k=1)
    onnx_labels = [p.top_k[0][0] for p in predictions]

    model, record = load_checkpoint(
        out / "trials" / f"{meta['trial']:04d}", get_plugin_manager([root / "recorder.py"]).registry
    )
    from tlsearch.preprocessing import normalize, prepare_image

    x = torch.from_numpy(
        normalize(np.stack([prepare_image(f, record.preprocessing) for f in files]), record.preprocessing)
    )
    with torch.no_grad():
        torch_labels = [record.labels[i] for i in model(x).argmax(1).tolist()]
    assert onnx_labels == torch_labels

    result = CliRunner().invoke(main, ["predict", str(model_file), str(files[0]), "--json"])
    assert result.exit_code == 0, result.output
    assert torch_labels[0] in result.output


def test_trials_record_how_fast_they_ran(finished) -> None:
    _, out, _ = finished
    probes = [t for t in _study(out).trials if t.user_attrs["plugins"]["freezing"] == "linear_probe"]
    for t in _study(out).trials:
        speed = t.user_attrs["speed"]
        hit = t.user_attrs["feature_cache"] and speed["feature_cache"]["hit"]
        assert speed["data_placement"] == ("features" if hit else "resident")  # 48 images: no streaming
        assert "latency_ms" not in t.user_attrs  # no objective or constraint reads it: never measured
    for t in probes:
        assert t.user_attrs["speed"]["feature_cache"]["key"]


def test_raw_input_export_and_int8_copy_of_the_study(finished) -> None:
    """Issue 6's options on a real study: preprocessing in the graph, and an INT8 copy measured on
    the labelled validation split (its drop is only warned about here: a tiny random-weight model)."""
    import warnings

    from tlsearch.deploy import Predictor
    from tlsearch.search import export_study, quantize_study

    _, out, _ = finished
    files = sorted(Path(json.loads((out / "study.json").read_text())["config"]["data"]["val"]).rglob("*.png"))
    exported_trial = json.loads((out / "model.json").read_text())["metadata"]["trial"]
    raw = export_study(out, trial=exported_trial, path=out / "raw.onnx", raw_input=True)
    plain = [p.top_k[0][0] for p in Predictor(out / "model.onnx").predict(files, top_k=1)]
    raw_predictor = Predictor(raw.path)
    assert raw_predictor.raw_input
    assert [p.top_k[0][0] for p in raw_predictor.predict(files, top_k=1)] == plain

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = quantize_study(out, on_drop="warn")
    assert report.path == out / "model.int8.onnx" and report.path.is_file()
    assert report.size_bytes < report.fp32_size_bytes
    assert report.labels_used and report.validation_images == len(files)
    true = [f.parent.name for f in files]
    assert report.accuracy_fp32 == pytest.approx(
        sum(a == b for a, b in zip(plain, true, strict=True)) / len(files)
    )
