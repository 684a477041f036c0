"""The README's Python-API example names methods and keywords that exist: every call in it on a
``Study``, a ``Worker`` or ``WorkerSettings`` binds to the real signature (a renamed method or
keyword breaks the example, and this test)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import tlsearch
from tlsearch.study_api import Study, Worker
from tlsearch.worker_settings import WorkerSettings

README = Path(__file__).resolve().parent.parent / "README.md"


def api_example() -> ast.Module:
    text = README.read_text()
    section = text.split("## Python API", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    return ast.parse(code)


def _owner(call: ast.Call) -> type | None:
    """Which class a call in the example is made on, from the shape of the expression."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None
    target = func.value
    if isinstance(target, ast.Name) and target.id == "study":
        return Study
    if isinstance(target, ast.Attribute) and target.attr == "Study":
        return type  # a classmethod of Study, looked up below
    if (
        isinstance(target, ast.Call)
        and isinstance(target.func, ast.Attribute)
        and target.func.attr == "worker"
    ):
        return Worker
    if isinstance(target, ast.Call):
        return Study  # tlsearch.Study.open(...).status()
    return None


def test_every_call_in_the_readme_example_binds_to_the_api() -> None:
    checked = []
    for node in ast.walk(api_example()):
        if not isinstance(node, ast.Call):
            continue
        owner = _owner(node)
        if owner is None and isinstance(node.func, ast.Attribute) and node.func.attr == "WorkerSettings":
            fn, name = WorkerSettings, "WorkerSettings"
        elif owner is None:
            continue
        else:
            cls = Study if owner is type else owner
            name = node.func.attr  # type: ignore[union-attr]
            assert hasattr(cls, name), f"README: {cls.__name__}.{name} does not exist"
            fn = getattr(cls, name)
        args = [None] * len(node.args)
        kwargs = {k.arg: None for k in node.keywords if k.arg}
        if owner is not None and owner is not type:
            args = [None, *args]  # self
        target = fn if owner is type or owner is None else getattr(fn, "__func__", fn)
        signature = inspect.signature(target)
        signature.bind(*args, **kwargs)  # TypeError names the keyword the README got wrong
        checked.append(name)
    assert {"from_yaml", "run", "status", "report", "export", "quantize", "rank", "watch", "create"} <= set(
        checked
    )
    assert {"from_dir", "worker", "open", "WorkerSettings"} <= set(checked)


def test_the_public_names_load_from_the_package_root() -> None:
    assert (tlsearch.Study, tlsearch.Worker, tlsearch.WorkerSettings) == (Study, Worker, WorkerSettings)
