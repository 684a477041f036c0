"""The exported model says what made it: the backbone's concrete model, each plugin of the winning
trial with the package (or file) and version that provided it, and the library versions; every
trial shows its concrete backbone model too. Read back with tlsearch.deploy, without torch."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import TINY_STUDY, _merge
from tests.test_deploy import run_without_torch
from tests.test_registry import HEAD_PLUGIN, make_distribution
from tlsearch.cli import main
from tlsearch.deploy import Predictor, Provenance

slow = pytest.mark.slow  # the tests on the study: two real trials and an export

REGULARIZER_FILE = '''
from tlsearch import hookimpl
from tlsearch.kinds import Regularizer


class Noop(Regularizer):
    """Changes nothing; here to be recorded."""

    name = "provenance_noop"


@hookimpl
def tlsearch_register_regularizers(register):
    register.add(Noop)
'''


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path):  # type: ignore[no-untyped-def]
    """A real tiny study: the built-in timm backbone (test_efficientnet), a head from an installed
    third-party distribution, the built-in linear probe, a regularizer from a plugin file."""
    root = tmp_path_factory.mktemp("provenance")
    site = root / "site"
    site.mkdir()
    make_distribution(
        site,
        dist="tls-test-provenance",
        version="1.2.3",
        module="tls_test_provenance",
        source=HEAD_PLUGIN.format(cls="ProvenanceHead", name="provenance_head"),
    )
    plugin_file = root / "my_plugins.py"
    plugin_file.write_text(REGULARIZER_FILE)
    config = _merge(
        TINY_STUDY,
        {
            "data": {"train": str(shapes_dir / "train"), "val": str(shapes_dir / "val")},
            "space": {
                "head": ["provenance_head"],
                "freezing": ["linear_probe"],
            },
            "training": {"epochs": 1},
            "search": {"n_trials": 2},
            "export": {"enabled": True, "soup": False},
            "plugins": ["my_plugins.py"],
        },
    )
    config["space"]["regularizers"] = {"provenance_noop": {"enabled": True}}  # only this one
    (root / "study.yaml").write_text(yaml.safe_dump(config))
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        result = CliRunner().invoke(main, ["run", str(root / "study.yaml"), "--out", str(out)])
        for name in [m for m in sys.modules if m.startswith("tls_test_")]:
            del sys.modules[name]
    assert result.exit_code == 0, result.output
    return {"out": out, "plugin_file": plugin_file, "model": out / "model.onnx"}


def _by_kind(plugins: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["kind"]: p for p in plugins}


@slow
def test_model_json_and_onnx_metadata_name_each_plugins_package_file_and_versions(study) -> None:  # type: ignore[no-untyped-def]
    meta = json.loads(study["model"].with_suffix(".json").read_text())["metadata"]
    session_meta = ort.InferenceSession(str(study["model"])).get_modelmeta().custom_metadata_map
    assert json.loads(session_meta["tlsearch"])["provenance"] == meta["provenance"]
    assert json.loads(session_meta["backbone_model"]) == meta["backbone_model"] == "test_efficientnet"
    assert meta["choices"]["backbone"] == "timm"  # the plugin; the model is what backbone_model says

    plugins = _by_kind(meta["provenance"]["plugins"])
    assert [p["kind"] for p in meta["provenance"]["plugins"]] == [
        "backbone",
        "head",
        "freezing",
        "regularizer",
    ]
    tlsearch_version = md.version("tlsearch")
    backbone = plugins["backbone"]
    assert (backbone["name"], backbone["package"], backbone["version"]) == (
        "timm",
        "tlsearch",
        tlsearch_version,
    )
    assert backbone["class"].startswith("tlsearch_builtins.") and "file" not in backbone
    assert plugins["freezing"]["name"] == "linear_probe" and plugins["freezing"]["package"] == "tlsearch"
    assert (plugins["head"]["name"], plugins["head"]["package"], plugins["head"]["version"]) == (
        "provenance_head",
        "tls-test-provenance",
        "1.2.3",
    )
    assert plugins["head"]["class"] == "tls_test_provenance.ProvenanceHead"
    regularizer = plugins["regularizer"]
    assert regularizer["name"] == "provenance_noop" and "package" not in regularizer
    assert regularizer["file"] == str(study["plugin_file"].resolve())
    assert regularizer["sha256"] == hashlib.sha256(study["plugin_file"].read_bytes()).hexdigest()

    versions = meta["provenance"]["versions"]
    for name in ("tlsearch", "torch", "timm", "onnx", "onnxruntime", "optuna"):
        assert versions[name] == md.version(name), name
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))


@slow
def test_every_trial_and_the_study_show_the_concrete_backbone_model(study) -> None:  # type: ignore[no-untyped-def]
    from tlsearch.search import StudyDir, open_study

    study_dir = StudyDir(study["out"])
    config = study_dir.load_config()
    loaded = open_study(config, study_dir.storage(config, None), create=False)
    assert len(loaded.trials) == 2
    for trial in loaded.trials:
        assert trial.user_attrs["choices"]["backbone"] == "timm"  # the plugin, as the search space has it
        assert trial.user_attrs["backbone_model"] == "test_efficientnet"
    assert loaded.user_attrs["export"]["backbone_model"] == "test_efficientnet"


@slow
def test_the_predictor_reads_the_provenance_back(study) -> None:  # type: ignore[no-untyped-def]
    provenance = Predictor(study["model"]).provenance
    assert provenance.backbone_model == "test_efficientnet"
    (head,) = provenance.of_kind("head")
    assert head.requirement() == "tls-test-provenance==1.2.3"
    (regularizer,) = provenance.of_kind("regularizer")
    assert regularizer.requirement() is None and regularizer.file_matches() is True
    pins = provenance.requirements()
    assert pins[:2] == [f"tlsearch=={md.version('tlsearch')}", "tls-test-provenance==1.2.3"]
    assert f"torch=={md.version('torch')}" in pins and f"timm=={md.version('timm')}" in pins
    with pytest.raises(ValueError, match="kind 'heads' is not valid; valid: backbone, head"):
        provenance.of_kind("heads")


@slow
def test_a_changed_plugin_file_no_longer_matches(study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (regularizer,) = Predictor(study["model"]).provenance.of_kind("regularizer")
    changed = tmp_path / "my_plugins.py"
    changed.write_text(study["plugin_file"].read_text() + "\n# edited\n")
    assert regularizer.file_matches(changed) is False
    assert regularizer.file_matches(study["plugin_file"]) is True
    assert regularizer.file_matches(tmp_path / "missing.py") is None


@slow
def test_the_provenance_reads_back_where_torch_cannot_be_imported(study) -> None:  # type: ignore[no-untyped-def]
    proc = run_without_torch(f"""
        import json
        from tlsearch.deploy import Predictor
        provenance = Predictor({str(study["model"])!r}).provenance
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "timm")]
        print(json.dumps(provenance.to_dict()))
    """)
    assert proc.returncode == 0, proc.stderr
    read = json.loads(proc.stdout)
    assert read["backbone_model"] == "test_efficientnet"
    assert read == Predictor(study["model"]).provenance.to_dict()
    assert [p["name"] for p in read["plugins"]] == [
        "timm",
        "provenance_head",
        "linear_probe",
        "provenance_noop",
    ]


def test_a_model_exported_before_provenance_reads_as_empty() -> None:
    empty = Provenance.from_metadata({"task": "classification"})
    assert (empty.backbone_model, empty.plugins, empty.requirements()) == (None, (), [])


@pytest.mark.parametrize(
    ("choices", "info", "model"),
    [
        ({"backbone": "timm", "backbone.timm.model": "resnet18"}, None, "resnet18"),
        (
            {"backbone": "torchvision", "backbone.torchvision.model": "mobilenet_v3_small"},
            {},
            "mobilenet_v3_small",
        ),
        ({"backbone": "efficientnet_lite0"}, None, "efficientnet_lite0"),  # a curated backbone is its model
        ({"backbone": "mine", "backbone.mine.arch": "x"}, {"model": "mine-v2"}, "mine-v2"),  # what it built
    ],
)
def test_backbone_model_names_the_concrete_model(choices: dict, info: dict | None, model: str) -> None:  # type: ignore[type-arg]
    from tlsearch.search.sampling import backbone_model

    assert backbone_model(choices, info) == model


def test_used_plugins_lists_the_regularizers_that_are_on() -> None:
    from tlsearch.export._provenance import used_plugins

    choices = {
        "backbone": "timm",
        "head": "linear",
        "freezing": "bitfit",
        "regularizer.mixup": True,
        "regularizer.mixup.alpha": 0.2,
        "regularizer.l2_sp": False,
        "regularizer.bss": True,
    }
    assert used_plugins(choices) == [
        ("backbone", "timm"),
        ("head", "linear"),
        ("freezing", "bitfit"),
        ("regularizer", "mixup"),
        ("regularizer", "bss"),
    ]


class _NotAModulePlugin:
    """A pluggy plugin registered as an object, not a module: its plugin classes' file is theirs."""


def test_a_plugin_not_registered_by_a_module_names_its_classs_file() -> None:
    """Bugs caught: no file (and so no sha256) for a plugin class registered by an object plugin,
    and a crash instead of no file for a class made at run time."""
    from tlsearch.export._provenance import plugin_source
    from tlsearch.registration import PluginInfo, Provider

    class FakeManager:
        def list_name_plugin(self) -> list[tuple[str, object]]:
            return [("objects", _NotAModulePlugin())]

        def provider_of(self, plugin: object) -> Provider:
            return Provider(plugin="objects")

    info = PluginInfo(kind="regularizer", name="here", cls=_NotAModulePlugin, provider=Provider("objects"))  # type: ignore[arg-type]
    entry = plugin_source(FakeManager(), info)  # type: ignore[arg-type]
    here = Path(__file__).resolve()
    assert (entry["file"], entry["sha256"]) == (str(here), hashlib.sha256(here.read_bytes()).hexdigest())
    made = type("Made", (), {"__module__": "not_imported_anywhere"})
    info = PluginInfo(kind="regularizer", name="made", cls=made, provider=Provider("objects"))
    made_entry = plugin_source(FakeManager(), info)  # type: ignore[arg-type]
    assert (made_entry["file"], made_entry["sha256"]) == (None, None)
