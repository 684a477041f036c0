"""A rerun of a finished study says its budget is done and keeps the model it already exported (the
model's metadata records which trial it is from); ``--force`` and ``tlsearch export`` export again.
``--raw-input --int8`` is refused before any export work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tlsearch.cli import main
from tlsearch.config import load_config
from tlsearch.errors import ConfigError

pytestmark = pytest.mark.slow  # one real trial and its export


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path) -> tuple[Path, Path, str]:
    import yaml

    from tests.conftest import TINY_STUDY, _merge

    root = tmp_path_factory.mktemp("rerun")
    study = _merge(
        TINY_STUDY,
        {
            "data": {"train": str(shapes_dir / "train"), "val": str(shapes_dir / "val")},
            "space": {"freezing": ["linear_probe"]},
            "training": {"epochs": 1},
            "search": {"n_trials": 1},
            "export": {"enabled": True},
        },
    )
    (root / "study.yaml").write_text(yaml.safe_dump(study))
    out = root / "out"
    result = CliRunner().invoke(main, ["run", str(root / "study.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return root / "study.yaml", out, result.output


def test_rerun_of_a_finished_study_keeps_the_model_already_exported(exported) -> None:
    study, out, _ = exported
    model = out / "model.onnx"
    assert json.loads(model.with_suffix(".json").read_text())["metadata"]["trial_hash"]
    before = model.stat().st_mtime_ns
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "the budget of 1 finished trials is done" in result.output
    assert "already the best trial's model; not exported again" in result.output
    assert "exported" not in result.output.replace("not exported again", "")
    assert model.stat().st_mtime_ns == before

    result = CliRunner().invoke(main, ["run", str(study), "--out", str(out), "--force"])
    assert result.exit_code == 0 and "exported " in result.output
    assert model.stat().st_mtime_ns != before


def test_a_model_from_another_trial_is_exported_again(exported) -> None:
    study, out, _ = exported
    described = out / "model.json"
    record = json.loads(described.read_text())
    record["metadata"]["trial_hash"] = "from-another-trial"
    described.write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(out)])
    assert (
        result.exit_code == 0 and "exported " in result.output and "not exported again" not in result.output
    )


def test_raw_input_with_int8_is_refused_before_any_export(exported, write_study) -> None:
    _, out, _ = exported
    result = CliRunner().invoke(
        main, ["export", str(out), "--raw-input", "--int8", "--out", str(out / "raw.onnx")]
    )
    assert result.exit_code == 2 and "--int8 quantises the plain model" in result.output
    assert not (out / "raw.onnx").exists()
    with pytest.raises(ConfigError, match="int8: true quantises the plain model"):
        load_config(write_study(export={"enabled": True, "raw_input": True, "int8": True}))


def test_run_records_the_majority_class_and_warns_when_the_best_does_not_beat_it(exported) -> None:
    import optuna

    from tlsearch.search.storage import make_storage

    _, out, output = exported
    study = optuna.load_study(study_name="tiny", storage=make_storage(str(out / "study.journal")))
    assert study.user_attrs["majority_class"] == ["circle", 0.25]  # 4 classes of 4 validation images
    best = max(t.user_attrs["metrics"]["accuracy"] for t in study.trials if t.state.name == "COMPLETE")
    warned = "no better than always predicting the most frequent class 'circle'" in output
    assert warned == (best <= 0.25)


def test_tlsearch_export_says_what_it_is_doing_before_the_long_wait(exported) -> None:
    """Bug caught: `tlsearch export` silent for the whole export and its parity check (~40 s)."""
    _, out, _ = exported
    result = CliRunner().invoke(main, ["export", str(out), "--out", str(out / "again.onnx")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    doing = next(i for i, line in enumerate(lines) if line.startswith("exporting the best trial to ONNX"))
    done = next(i for i, line in enumerate(lines) if line.startswith("exported "))
    assert doing < done and (out / "again.onnx").is_file()
