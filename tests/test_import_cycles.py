"""The tlsearch package imports without circles: no module-level import cycle between its modules.

The graph is built from the source (ast), so a cycle fails here before it bites as a half-initialised
module at import time. Module-level imports (including those under ``if TYPE_CHECKING:``, which
only mypy follows but which still tie the modules together) make the edges; imports inside a function
run late and are counted apart (:func:`function_imports`), not as cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tlsearch

ROOT = Path(tlsearch.__file__).parent

#: module-level cycles being removed (each: the modules in it); empty since cli.console ↔ report._live
#: and hookspecs ↔ registry were broken
KNOWN_CYCLES: set[frozenset[str]] = set()
#: circles closed only by an import inside a function (each a deliberate lazy import, harmless at
#: import time); a new one is a design question, so it fails too
KNOWN_LATE_CYCLES: set[frozenset[str]] = {
    frozenset({"tlsearch.config", "tlsearch.validate"}),
    frozenset({"tlsearch.deploy._format", "tlsearch.deploy._provenance"}),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _targets(node: ast.Import | ast.ImportFrom, here: str, is_package: bool, modules: set[str]) -> set[str]:
    """The tlsearch modules an import statement loads (``from pkg import mod`` counts ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = here.split(".") if is_package else here.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        names = [f"{base}.{alias.name}" for alias in node.names] + [base]
    found = set()
    for name in names:
        while name and name not in modules:  # ``import a.b.c`` of a name inside a module
            name = name.rpartition(".")[0]
        if name and name != here:
            found.add(name)
    return found


def _imports(node: ast.AST, in_function: bool = False) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``node``, with whether it runs inside a function."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append((child, in_function))
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        found += _imports(child, inner)
    return found


def lazy_reexports(tree: ast.Module) -> set[int]:
    """The root package's lazy re-exports (PEP 562): the imports inside its module ``__getattr__``
    and the ``if TYPE_CHECKING:`` block that mirrors them for type checkers. They load
    ``tlsearch.Study`` and the like only when someone asks for the name, never while another module
    is importing, so they are not edges: without this rule every module that imports
    ``tlsearch.hookimpl`` or ``__version__`` from the root would be "in a cycle" with the API."""
    skip: set[int] = set()
    for node in tree.body:
        lazy = (isinstance(node, ast.FunctionDef) and node.name == "__getattr__") or (
            isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        )
        if lazy:
            skip |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return skip


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, function-level edges) between the package's modules."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    top: dict[str, set[str]] = {m: set() for m in modules}
    late: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"

        facade = lazy_reexports(tree) if name == "tlsearch" else set()
        for node, in_function in _imports(tree):
            if id(node) in facade:
                continue
            (late if in_function else top)[name] |= _targets(node, name, is_package, modules)
    return top, late


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_cycles_are_found_on_a_made_up_graph() -> None:
    """Bug caught: the cycle finder missing a three-module circle or calling a chain a cycle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_module_level_imports_make_no_new_cycle() -> None:
    """Bug caught: ``tlsearch.rank`` importing ``tlsearch.search`` at module level again (or any new
    circle): the cycle's modules are named, so the fix is clear."""
    top, _ = import_graph()
    new = [sorted(c) for c in cycles(top) if c not in KNOWN_CYCLES]
    assert not new, f"module-level import cycles: {new}"


def test_function_level_imports_close_no_new_cycle() -> None:
    """Bug caught: a lazy import inside a function hiding a new circle (the modules still depend on
    each other; only the import order hides it)."""
    top, late = import_graph()
    both = {m: top[m] | late[m] for m in top}
    new = [sorted(c) for c in cycles(both) if c not in KNOWN_CYCLES | KNOWN_LATE_CYCLES]
    assert not new, f"import cycles through function-level imports: {new}"


def test_rank_and_search_do_not_import_each_other() -> None:
    """Bug caught: a function-level import of ``tlsearch.search`` inside ``tlsearch.rank`` (the late
    import hides the circle from the module graph, not from the design)."""
    top, late = import_graph()
    rank_to_search = sorted(
        (m, t)
        for graph in (top, late)
        for m, targets in graph.items()
        if m.startswith("tlsearch.rank")
        for t in targets
        if t.startswith("tlsearch.search")
    )
    assert rank_to_search == []


def test_the_graph_sees_real_edges() -> None:
    """Bug caught: a graph builder that finds no edges (and so no cycles, ever)."""
    top, _ = import_graph()
    assert "tlsearch.rank.study" in top["tlsearch.search.study"]
    assert "tlsearch.train.features" in top["tlsearch.rank.ranking"]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between tlsearch's subpackages and top-level modules (``tlsearch.rank``, ``tlsearch.config``)."""

    def top_level(module: str) -> str:
        return ".".join(module.split(".")[:2])

    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(top_level(module), set()).update(
            top_level(t) for t in targets if top_level(t) != top_level(module)
        )
    return out


#: subpackage circles of the lists above, seen a level up (``cli`` ↔ ``report`` is console ↔ _live)
KNOWN_PACKAGE_CYCLES: set[frozenset[str]] = {
    frozenset({"tlsearch.cli", "tlsearch.report"}),
    frozenset({"tlsearch.hookspecs", "tlsearch.registry"}),
    frozenset({"tlsearch.config", "tlsearch.validate"}),
}


def test_subpackages_do_not_import_each_other_in_a_circle() -> None:
    """Bug caught: ``rank`` ↔ ``search`` (or any two subpackages) depending on each other through
    different modules, which the module graph alone does not show as one cycle."""
    top, late = import_graph()
    both = {m: top[m] | late[m] for m in top}
    new = [sorted(c) for c in cycles(package_graph(both)) if c not in KNOWN_PACKAGE_CYCLES]
    assert not new, f"subpackage import cycles: {new}"
