"""The core (``tlsearch/``) names no built-in plugin: what the warm start and the default space use
comes from the plugins' declarations (``portfolio``, ``default``), so a third-party plugin can take
any built-in's place. This scans every string the core's code uses (error messages and f-strings
included) for the name of any built-in plugin, as a whole word.

Not scanned: docstrings and comments. They use the built-ins as examples a reader recognises
(``{"backbone": "timm", …}`` in a hook's documentation) and change no behaviour; a name in code is
what would make the core treat one plugin differently.

Allowed, each because the string is core vocabulary that a built-in happens to share a name with:

* ``regression`` — the study task (``task: regression``); the built-in ``regression`` head is named
  after it.
* ``cosine`` — the learning-rate schedule (``training.scheduler: cosine``), not the cosine head.
* ``weight_decay``, ``label_smoothing`` in the training contract (``kinds/regularizer.py``'s
  ``OPTIMIZER_OPTIONS``/``LOSS_OPTIONS`` and the loop and optimizer that apply them): the option
  keys any regularizer returns from ``optimizer_options()``/``loss_options()``, PyTorch's own
  argument names; the built-in regularizers are named after them.
* ``linear`` in ``export/_preprocessing.py``: the ONNX ``Resize`` mode of bilinear resizing.
* ``timm``, ``torchvision`` as libraries: ``deploy/_provenance.py`` records the distributions a
  deployment needs; ``config.py``'s field descriptions cite the libraries' conventions.
* architecture names in ``train/compiling.py``: the reference compile measurements are keyed by
  the concrete model a backbone reports (``info["model"]``), whichever plugin built it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tlsearch
from tlsearch.registry import get_plugin_manager

CORE = Path(tlsearch.__file__).parent
EVERYWHERE = {"regression", "cosine"}
ALLOWED: dict[str, set[str]] = {
    "kinds/regularizer.py": {"weight_decay", "label_smoothing"},
    "train/loop.py": {"weight_decay", "label_smoothing"},
    "train/optim.py": {"weight_decay"},
    "train/losses.py": {"label_smoothing"},  # the loss option key, as in kinds/regularizer.py
    "export/_preprocessing.py": {"linear"},
    "deploy/_provenance.py": {"timm", "torchvision"},
    "config.py": {"timm", "torchvision"},
    "train/compiling.py": {"efficientnet_lite0", "resnet50", "convnext_tiny", "vit_small_patch16_224"},
}


def builtin_names() -> set[str]:
    registry = get_plugin_manager(autoload=False).registry
    return {name for plugins in registry.plugins.values() for name in plugins}


def code_strings(source: str) -> list[tuple[int, str]]:
    """The string constants of ``source`` that are not docstrings (bare string statements)."""
    tree = ast.parse(source)
    docs = {
        id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
    ]


def named_builtins(text: str, names: set[str]) -> set[str]:
    return {n for n in names if re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", text)}


def test_the_core_code_names_no_builtin_plugin() -> None:
    names = builtin_names()
    assert {"linear_probe", "full_finetune", "layer_decay", "label_smoothing", "linear", "timm"} <= names
    found = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE).as_posix()
        allowed = EVERYWHERE | ALLOWED.get(rel, set())
        for line, text in code_strings(path.read_text(encoding="utf-8")):
            for name in sorted(named_builtins(text, names) - allowed):
                found.append(f"tlsearch/{rel}:{line}: {name!r} in {text[:80]!r}")
    assert not found, "the core names built-in plugins:\n" + "\n".join(found)


def test_the_scan_sees_code_strings_and_skips_docstrings() -> None:
    """The check itself: a built-in's name in code (a comparison, an f-string) is found; the same
    name in a docstring is not."""
    source = '''
def pick(space):
    """Prefer linear_probe."""
    if space.freezing[0].name == "linear_probe":
        return f"use {space} with layer_decay"
'''
    texts = [text for _, text in code_strings(source)]
    assert named_builtins(" ".join(texts), builtin_names()) == {"linear_probe", "layer_decay"}
