"""Start-up stays light: ``tlsearch --help`` and ``tlsearch predict --help`` import none of the heavy
libraries (torch, optuna, timm, onnx), so they answer at once; the commands import them when they run.

Checked by module presence in a fresh interpreter, not by timing (``benchmarks/bench_startup.py``
times it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "optuna", "timm", "onnx", "onnxruntime")
ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import json, sys
from click.testing import CliRunner
import tlsearch.cli
from tlsearch.cli import main
result = CliRunner().invoke(main, sys.argv[1:])
assert result.exit_code == 0, result.output
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _heavy_after(*args: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [("--help",), ("predict", "--help"), ("plugins", "--help")])
def test_help_imports_no_heavy_library(args: tuple[str, ...]) -> None:
    assert _heavy_after(*args) == []


def test_kind_names_match_the_plugin_kinds() -> None:
    from tlsearch.cli.options import KIND_NAMES
    from tlsearch.kinds import KINDS

    assert tuple(sorted(KINDS)) == KIND_NAMES
