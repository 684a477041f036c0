"""CONTRIBUTING.md shows the example package's code as it is: every code line of an excerpt from
the example (outside docstrings and imports) is a line of the example's source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SOURCE = ROOT / "examples" / "tlsearch-example-plugin" / "src" / "tlsearch_example_plugin"
EXCERPT_MARKERS = ("class TrainNorms", "def init_from_data", "def penalty(", "load_weights_file(")


def _excerpts() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "CONTRIBUTING.md").read_text(), flags=re.S)
    return [b for b in blocks if any(m in b for m in EXCERPT_MARKERS)]


def _code_lines(block: str) -> list[str]:
    lines, in_docstring = [], False
    for line in block.splitlines():
        stripped = line.strip()
        quotes = stripped.count('"""')
        if in_docstring or quotes:
            in_docstring = in_docstring != (quotes % 2 == 1)
            continue
        if stripped and not stripped.startswith(("from ", "import ", "#")):
            lines.append(stripped)
    return lines


def test_there_is_an_excerpt_of_each_kind() -> None:
    found = {m for m in EXCERPT_MARKERS for b in _excerpts() if m in b}
    assert found == set(EXCERPT_MARKERS)


@pytest.mark.parametrize("block", _excerpts(), ids=lambda b: b.strip().splitlines()[0][:40])
def test_each_excerpt_is_the_example_code(block: str) -> None:
    source = {line.strip() for path in SOURCE.glob("*.py") for line in path.read_text().splitlines()}
    missing = [line for line in _code_lines(block) if line not in source]
    assert not missing, f"CONTRIBUTING.md shows lines the example does not have: {missing}"
