"""The example package's four plugins, registered the way a third party's are: through the public
plugin-manager API (fast, no install), and by the entry point its pyproject.toml declares
(test_example_plugin.py pip-installs it and runs a search with all four)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tlsearch.registry import get_plugin_manager

EXAMPLE = Path(__file__).parents[1] / "examples" / "tlsearch-example-plugin"
PLUGINS = {
    "backbone": "small_cnn",
    "head": "prototype",
    "freezing": "train_norms",
    "regularizer": "confidence_penalty",
}


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    for name in [m for m in sys.modules if m.startswith("tlsearch_example_plugin")]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("tlsearch_example_plugin")


def test_the_entry_point_names_the_module_with_the_four_register_hooks(example: ModuleType) -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    entry_points = project["project"]["entry-points"]["tlsearch"]
    assert list(entry_points.values()) == ["tlsearch_example_plugin"]
    pm = get_plugin_manager()
    hooks = {
        name
        for name in dir(example)
        if name.startswith("tlsearch_") and pm.parse_hookimpl_opts(example, name) is not None
    }
    assert hooks == {
        "tlsearch_register_backbones",
        "tlsearch_register_heads",
        "tlsearch_register_freezing_strategies",
        "tlsearch_register_regularizers",
    }


def test_registering_the_module_adds_one_plugin_of_each_kind(example: ModuleType) -> None:
    pm = get_plugin_manager()
    assert "small_cnn" not in pm.registry.names("backbone")
    pm.register(example, name="tlsearch_example_plugin")
    classes = {
        "backbone": example.SmallCNNBackbone,
        "head": example.PrototypeHead,
        "freezing": example.TrainNorms,
        "regularizer": example.ConfidencePenalty,
    }
    for kind, name in PLUGINS.items():
        info = pm.registry.get(kind, name)
        assert info.cls is classes[kind], kind
        assert info.to_dict()["summary"] == classes[kind].summary()
    listed = {p.name for p in pm.registry}
    assert {"timm", "linear", "full_finetune", "mixup"} <= listed  # beside the built-ins, no clash


def test_the_example_tests_use_only_public_tlsearch_modules() -> None:
    """A stranger copies the example: it must not reach into tlsearch's private modules."""
    for path in [*(EXAMPLE / "src").rglob("*.py"), *(EXAMPLE / "tests").rglob("*.py")]:
        text = path.read_text()
        assert "tlsearch_builtins" not in text, path
        assert not re.search(r"\btlsearch(\.[a-z]\w*)*\._[a-z]", text), path  # tlsearch.testing._loop …
