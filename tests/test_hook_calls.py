"""Hooks are called through pluggy's relay: tracing, wrappers, tryfirst/trylast and unregister
work as pluggy documents, and a broken wrapper or an unmarked hook is reported by name."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_registry import HEAD_PLUGIN, make_distribution, site  # noqa: F401 - site is a fixture
from tlsearch import hookimpl
from tlsearch.errors import FailTrial, PluginError
from tlsearch.registry import BLOCK_ENV, get_plugin_manager

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """An observer of ``tlsearch_export_done`` (which no built-in implements) that logs its calls."""

    def __init__(self, events: list[str], label: str) -> None:
        self.events, self.label = events, label

    @hookimpl
    def tlsearch_export_done(self, path: str, metadata: dict[str, Any]) -> None:
        self.events.append(self.label)


def test_trace_output_appears_from_the_cli(tmp_path: Path) -> None:
    file = tmp_path / "traced.py"
    file.write_text(HEAD_PLUGIN.format(cls="Traced", name="traced_head"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
        "TLSEARCH_TRACE_HOOKS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tlsearch", "plugins", "list", "--plugin", str(file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "traced_head" in result.stdout
    for hook_name in ("tlsearch_register_heads", "tlsearch_register_backbones"):
        assert re.search(rf"{hook_name} \[hook\]", result.stderr), result.stderr[-2000:]
    # one call per implementation, each showing whose register it is
    assert re.search(r"register: Register\(kind='head', provider='[^']*traced\.py", result.stderr)


def test_a_wrapper_runs_around_the_other_implementations() -> None:
    events: list[str] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def tlsearch_export_done(self, path: str, metadata: dict[str, Any]) -> Any:
            events.append(f"before {path}")
            result = yield
            events.append("after")
            return result

    pm = get_plugin_manager()
    pm.register(Recorder(events, "observer"))
    pm.register(Wrapper())
    pm.notify("tlsearch_export_done", path="model.onnx", metadata={})
    assert events == ["before model.onnx", "observer", "after"]


def test_a_register_wrapper_runs_around_each_provider_and_sees_its_register() -> None:
    kinds: list[str] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def tlsearch_register_heads(self, register: Any) -> Any:
            kinds.append(register.kind)
            return (yield)

    pm = get_plugin_manager()
    pm.register(Wrapper())
    assert "linear" in pm.registry.names("head")
    assert kinds == ["head"]  # the built-in heads are the only other implementation


def test_tryfirst_and_trylast_set_the_order() -> None:
    events: list[str] = []

    class First(Recorder):
        tlsearch_export_done = hookimpl(tryfirst=True)(Recorder.tlsearch_export_done)

    class Last(Recorder):
        tlsearch_export_done = hookimpl(trylast=True)(Recorder.tlsearch_export_done)

    pm = get_plugin_manager()
    # Registered in the reverse of the wanted order: pluggy calls later registrations first.
    pm.register(First(events, "first"))
    pm.register(Recorder(events, "middle"))
    pm.register(Last(events, "last"))
    pm.notify("tlsearch_export_done", path="m.onnx", metadata={})
    assert events == ["first", "middle", "last"]


def test_unregister_removes_the_plugins_classes_and_calls(tmp_path: Path) -> None:
    file = tmp_path / "gone.py"
    file.write_text(HEAD_PLUGIN.format(cls="Gone", name="gone_head"))
    pm = get_plugin_manager([file])
    assert "gone_head" in pm.registry.names("head")
    events: list[str] = []
    recorder = Recorder(events, "recorder")
    pm.register(recorder)
    pm.unregister(pm.load_file(file))
    pm.unregister(recorder)
    pm.notify("tlsearch_export_done", path="m.onnx", metadata={})
    assert "gone_head" not in pm.registry.names("head") and "linear" in pm.registry.names("head")
    assert events == []


def test_a_register_wrapper_that_raises_is_a_plugin_error_naming_it(tmp_path: Path) -> None:
    file = tmp_path / "bad_wrapper.py"
    file.write_text(
        "from tlsearch import hookimpl\n\n"
        "@hookimpl(wrapper=True)\n"
        "def tlsearch_register_heads(register):\n"
        "    raise RuntimeError('wrapper broke')\n"
        "    yield\n"
    )
    with pytest.raises(PluginError) as err:
        get_plugin_manager([file])
    message = str(err.value)
    assert "bad_wrapper.py" in message and "tlsearch_register_heads" in message
    assert "RuntimeError: wrapper broke" in message and "builtin_heads" not in message


def test_an_observer_wrapper_that_raises_is_named_not_the_plugin_it_wraps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "raising_wrapper.py"
    file.write_text(
        "from tlsearch import hookimpl\n"
        "from tlsearch.errors import FailTrial\n\n"
        "@hookimpl(wrapper=True)\n"
        "def tlsearch_export_done(path, metadata):\n"
        "    yield\n"
        "    raise FailTrial('from the wrapper')\n"
    )
    events: list[str] = []
    pm = get_plugin_manager([file])
    pm.register(Recorder(events, "observer"), name="wrapped_observer")
    caplog.set_level(logging.WARNING, logger="tlsearch")
    pm.notify("tlsearch_export_done", path="m.onnx", metadata={})
    assert events == ["observer"]
    warned = [r.getMessage() for r in caplog.records if "tlsearch_export_done" in r.getMessage()]
    assert len(warned) == 1 and "raising_wrapper.py" in warned[0] and "wrapped_observer" not in warned[0]
    with pytest.raises(FailTrial, match=r"raising_wrapper\.py.*from the wrapper"):
        pm.notify("tlsearch_export_done", may_end_trial=True, path="m.onnx", metadata={})


def test_hook_like_functions_without_hookimpl_warn(tmp_path: Path) -> None:
    file = tmp_path / "unmarked.py"
    file.write_text(
        "def tlsearch_register_heads(register):\n    pass\n\n"
        "class Observer:\n    def tlsearch_study_end(self, study, out_dir):\n        pass\n"
    )
    with pytest.warns(UserWarning) as record:
        get_plugin_manager([file])
    messages = [str(w.message) for w in record]
    assert any("unmarked.py" in m and "tlsearch_register_heads looks like a hook" in m for m in messages)
    assert any("Observer.tlsearch_study_end looks like a hook" in m for m in messages)


def test_following_the_advice_of_a_clash_with_a_builtin_resolves_it(
    site: Path,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_distribution(
        site,
        dist="tls-test-clash",
        version="0.2",
        module="tls_test_clash",
        source=HEAD_PLUGIN.format(cls="Clash", name="linear"),
    )
    with pytest.raises(PluginError) as err:
        get_plugin_manager()
    advice = re.search(rf"set ({BLOCK_ENV})=(\S+) to leave it out", str(err.value))
    assert advice, str(err.value)
    monkeypatch.setenv(advice.group(1), advice.group(2))
    info = get_plugin_manager().registry.get("head", "linear")
    assert info.provider.package == "tlsearch"


def test_a_clash_between_plugin_files_names_the_file_to_drop(tmp_path: Path) -> None:
    first, second = tmp_path / "one.py", tmp_path / "two.py"
    first.write_text(HEAD_PLUGIN.format(cls="One", name="twin"))
    second.write_text(HEAD_PLUGIN.format(cls="Two", name="twin"))
    with pytest.raises(PluginError) as err:
        get_plugin_manager([first, second])
    assert f"drop the plugin file {second}" in str(err.value)
    get_plugin_manager([first])  # and dropping it resolves the clash
