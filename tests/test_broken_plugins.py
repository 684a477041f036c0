"""Broken third-party plugins are skipped with a warning (conda's rule) and listed as broken; a
study that asks for one of their plugins, a broken built-in and a broken plugin file are errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.test_registry import HEAD_PLUGIN, make_distribution, site  # noqa: F401 - site is a fixture
from tlsearch.cli import main
from tlsearch.errors import ConfigError, PluginError
from tlsearch.registry import get_plugin_manager

EXITS = "import sys\nsys.exit(0)\n"
RAISES_IN_REGISTER = HEAD_PLUGIN.format(cls="Half", name="half_head") + textwrap.dedent("""
    @hookimpl
    def tlsearch_register_regularizers(register):
        raise RuntimeError("licence server unreachable")
""")
MISSPELT = "from tlsearch import hookimpl\n\n@hookimpl\ndef tlsearch_trial_ended(trial):\n    pass\n"
WRONG_ARGUMENT = (
    "from tlsearch import hookimpl\n\n@hookimpl\ndef tlsearch_epoch_end(trial, metrix):\n    pass\n"
)


def test_plugin_calling_sys_exit_at_import_is_skipped_and_listed_as_broken(site: Path) -> None:  # noqa: F811
    make_distribution(site, dist="tls-test-exit", version="1.0", module="tls_test_exit", source=EXITS)
    with pytest.warns(UserWarning, match=r"tls_test_exit.*sys\.exit"):
        pm = get_plugin_manager()
    assert "linear" in pm.registry.names("head")
    result = CliRunner().invoke(main, ["plugins", "list"])
    assert result.exit_code == 0, result.output
    assert "broken (skipped)" in result.output and "tls_test_exit" in result.output
    listed = json.loads(CliRunner().invoke(main, ["plugins", "list", "--json"]).stdout)
    (broken,) = [p for p in listed if p["status"] == "broken"]
    assert broken["plugin"] == "tls_test_exit" and "sys.exit" in broken["reason"]
    assert all(p["status"] == "ok" for p in listed if p is not broken)


def test_plugin_raising_in_its_register_hook_is_skipped_with_all_it_registered(
    site: Path,  # noqa: F811
    write_study,
) -> None:
    from tlsearch.search import prepare

    make_distribution(
        site, dist="tls-test-half", version="2.0", module="tls_test_half", source=RAISES_IN_REGISTER
    )
    with pytest.warns(UserWarning, match="tls_test_half.*licence server unreachable"):
        pm = get_plugin_manager()
    assert "half_head" not in pm.registry.names("head") and "linear" in pm.registry.names("head")
    assert pm.get_plugin("tls_test_half") is None  # its observer hooks do not run either
    study = write_study(space={"head": ["half_head"]})
    with pytest.warns(UserWarning), pytest.raises(ConfigError) as err:
        prepare(study)
    message = str(err.value)
    assert "head 'half_head' comes from a broken plugin" in message
    assert "tls-test-half 2.0" in message and "licence server unreachable" in message


def test_misspelt_hook_in_an_installed_plugin_skips_it(site: Path) -> None:  # noqa: F811
    make_distribution(site, dist="tls-test-typo", version="1.0", module="tls_test_typo", source=MISSPELT)
    with pytest.warns(UserWarning, match="tls_test_typo.*unknown hook 'tlsearch_trial_ended'"):
        pm = get_plugin_manager()
    assert pm.get_plugin("tls_test_typo") is None and "linear" in pm.registry.names("head")


def test_broken_builtin_fails_loudly(site: Path) -> None:  # noqa: F811
    make_distribution(site, dist="tlsearch", version="0.0", module="tls_test_fake_builtin", source=EXITS)
    with pytest.raises(PluginError, match="built-in plugin .*tls_test_fake_builtin.* is broken.*sys.exit"):
        get_plugin_manager()


def test_plugin_file_calling_sys_exit_is_an_error(tmp_path: Path) -> None:
    file = tmp_path / "exits.py"
    file.write_text(EXITS)
    with pytest.raises(PluginError, match=r"exits\.py.*failed to import.*sys\.exit"):
        get_plugin_manager([file])


def test_wrong_argument_name_names_the_plugin_the_hook_and_the_valid_names(tmp_path: Path) -> None:
    file = tmp_path / "wrong_arg.py"
    file.write_text(WRONG_ARGUMENT)
    result = CliRunner().invoke(main, ["plugins", "list", "--plugin", str(file)])
    assert result.exit_code == 2, result.output
    assert (
        "wrong_arg.py" in result.output and "tlsearch_epoch_end() takes argument(s) 'metrix'" in result.output
    )
    assert "valid argument names: trial, epoch, metrics, out_dir" in result.output
    assert "Traceback" not in result.output
