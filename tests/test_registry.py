"""Plugin discovery: built-ins through entry points, installed distributions, plugin files, and what goes wrong."""

from __future__ import annotations

import inspect
import logging
import re
import sys
import textwrap
from pathlib import Path

import pytest

from tlsearch import hookspecs
from tlsearch.errors import ConfigError, PluginError
from tlsearch.registry import AUTOLOAD_ENV, get_plugin_manager

HEAD_PLUGIN = """
from torch import nn
from tlsearch import hookimpl
from tlsearch.kinds import Head

class {cls}(Head):
    '''A test head.'''
    name = "{name}"
    def build(self, in_features, out_features):
        return nn.Linear(in_features, out_features)

@hookimpl
def tlsearch_register_heads(register):
    register.add({cls})
"""


def make_distribution(site: Path, *, dist: str, version: str, module: str, source: str) -> None:
    """An installed distribution as importlib.metadata sees one: a module plus a dist-info with an entry point."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[tlsearch]\n{module} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    yield path
    for name in [m for m in sys.modules if m.startswith("tls_test_")]:
        del sys.modules[name]


def test_builtins_come_through_the_entry_point_group() -> None:
    registry = get_plugin_manager().registry
    assert {"timm"} <= set(registry.names("backbone"))
    assert {"linear"} <= set(registry.names("head"))
    assert {"full_finetune", "linear_probe"} <= set(registry.names("freezing"))
    assert {"weight_decay", "label_smoothing"} <= set(registry.names("regularizer"))
    provider = registry.get("head", "linear").provider
    assert provider.package == "tlsearch" and provider.plugin.startswith("builtin_")


def test_installed_distribution_is_discovered_with_its_provider(site: Path) -> None:
    make_distribution(
        site,
        dist="tls-test-heads",
        version="1.2.3",
        module="tls_test_heads",
        source=HEAD_PLUGIN.format(cls="Special", name="special_head"),
    )
    info = get_plugin_manager().registry.get("head", "special_head")
    assert (info.provider.package, info.provider.version) == ("tls-test-heads", "1.2.3")
    assert info.cls().build(8, 3).out_features == 3


def test_autoload_can_be_disabled_but_builtins_stay(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution(
        site,
        dist="tls-test-off",
        version="1.0",
        module="tls_test_off",
        source=HEAD_PLUGIN.format(cls="Off", name="off_head"),
    )
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    registry = get_plugin_manager().registry
    assert "off_head" not in registry.names("head")
    assert "linear" in registry.names("head")


def test_plugin_file_is_loaded(tmp_path: Path) -> None:
    file = tmp_path / "my_plugins.py"
    file.write_text(HEAD_PLUGIN.format(cls="Mine", name="mine"))
    info = get_plugin_manager([file]).registry.get("head", "mine")
    assert str(file) in str(info.provider)


def test_duplicate_name_names_both_providers(site: Path, tmp_path: Path) -> None:
    make_distribution(
        site,
        dist="tls-test-dup",
        version="0.1",
        module="tls_test_dup",
        source=HEAD_PLUGIN.format(cls="Dup", name="linear"),
    )
    with pytest.raises(PluginError) as err:
        get_plugin_manager().registry  # noqa: B018
    message = str(err.value)
    assert "'linear' is provided twice" in message
    assert "tls-test-dup 0.1" in message and "tlsearch" in message


def test_broken_plugin_warns_and_is_skipped(site: Path) -> None:
    make_distribution(
        site,
        dist="tls-test-broken",
        version="9.9",
        module="tls_test_broken",
        source="import a_module_that_does_not_exist\n",
    )
    with pytest.warns(UserWarning, match="tls_test_broken.*ModuleNotFoundError"):
        pm = get_plugin_manager()
    assert "linear" in pm.registry.names("head")
    assert pm.failures and "a_module_that_does_not_exist" in pm.failures[0].error


def test_study_asking_for_a_broken_plugin_says_why(site: Path, write_study) -> None:
    from tlsearch.search import prepare

    make_distribution(
        site,
        dist="tls-test-broken2",
        version="1.0",
        module="tls_test_broken2",
        source="raise RuntimeError('needs CUDA 99')\n",
    )
    study = write_study(space={"head": ["fancy_head"]})
    with pytest.warns(UserWarning), pytest.raises(ConfigError) as err:
        prepare(study)
    assert "unknown head 'fancy_head'" in str(err.value)
    assert "needs CUDA 99" in str(err.value)


def test_misspelt_hook_fails_loudly(tmp_path: Path) -> None:
    file = tmp_path / "typo.py"
    file.write_text(
        "from tlsearch import hookimpl\n\n@hookimpl\ndef tlsearch_register_backbone(register):\n    pass\n"
    )
    with pytest.raises(PluginError, match="tlsearch_register_backbone"):
        get_plugin_manager([file])


def test_register_refuses_what_is_not_a_plugin(tmp_path: Path) -> None:
    file = tmp_path / "bad.py"
    file.write_text(
        "from tlsearch import hookimpl\n\n@hookimpl\ndef tlsearch_register_heads(register):\n    register.add(dict)\n"
    )
    with pytest.raises(PluginError, match="expected a subclass of tlsearch.kinds.Head"):
        get_plugin_manager([file])
    file.write_text(HEAD_PLUGIN.format(cls="Bad", name="Bad-Name"))
    with pytest.raises(PluginError, match="must match"):
        get_plugin_manager([file])


def test_a_raising_observer_is_logged_with_its_plugin_and_the_call_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "observer.py"
    file.write_text(
        "from tlsearch import hookimpl\n\n@hookimpl\ndef tlsearch_study_end(study, out_dir):\n    raise ValueError('boom')\n"
    )
    pm = get_plugin_manager([file])
    caplog.set_level(logging.DEBUG, logger="tlsearch")
    for _ in range(3):
        pm.notify("tlsearch_study_end", study=None, out_dir=str(tmp_path))
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "observer.py" in r.getMessage()
    ]
    assert len(warned) == 1 and re.search(r"observer.py.*tlsearch_study_end.*ValueError: boom", warned[0])


def _hook_names() -> list[str]:
    return [n for n, _ in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("tlsearch_")]


def test_every_hook_is_documented() -> None:
    for name in _hook_names():
        assert len(inspect.getdoc(getattr(hookspecs, name)) or "") > 30, f"{name} needs a docstring"


def test_every_hook_is_exercised_by_the_recording_plugin() -> None:
    """datasette's discipline: every hook is implemented by the plugin that test_end_to_end runs and
    checks, so a new hook cannot land untested."""
    from tests.test_end_to_end import RECORDER

    missing = [n for n in _hook_names() if f"def {n}(" not in RECORDER]
    assert not missing, f"hooks without a test: {missing}"
