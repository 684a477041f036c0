"""A small mutation-testing harness: how many plausible one-line bugs do the tests catch?

Each *mutant* is the source of one module with one small change that a person could plausibly
make by mistake — a comparison flipped (``<`` → ``<=``), an arithmetic operator swapped, ``and``
↔ ``or``, a ``not`` dropped, a number moved (``0`` → ``1``, ``x`` → ``x + 1``), ``True`` ↔
``False``, a call statement removed, a ``return x`` turned into ``return None``. The harness
applies one mutant at a time to a private copy of the repository, runs the tests of the test files
that target that module (``targets.toml``; ``pytest -x``, so a killed mutant stops at its first
failure), and counts it *killed* when the tests fail and *survived* when they pass. Survivors are
printed with their file, line and change: each is either a missing test or an equivalent mutant (a
change that cannot alter behaviour), to be judged by a person.

Speed. A mutant used to cost a new interpreter, the torch/timm/optuna imports and a collection
(10–45 s before its first test ran). Now the harness imports those third-party modules once and
runs each mutant's pytest in-process in a ``fork`` of itself, the package under test imported
afresh from the mutated copy (it is never imported in the parent; no ``.pyc`` is written, so an
earlier mutant's bytecode is never read). A clean run of each test set first records, by tracing,
which tests run which lines of the target modules (a fixture's lines count for every test that uses
it; import-time lines for all tests); a mutant then runs only the tests that run its lines, in file
order, and a mutant on a line that no test runs is not run at all and counts as *uncovered*, which
the figure counts as survived. ``--all-tests`` turns the selection off.

Why our own harness rather than mutmut or cosmic-ray: both rewrite the package in place or need a
per-project runner configuration that clashes with the editable install and the ``plugins/``
layout; this one is 600 lines, needs nothing beyond the standard library and pytest, runs mutants in
parallel copies of the tree, and its targets (module → test files) live in ``targets.toml`` beside
it. It mutates through the AST (``ast.unparse`` of the mutated tree), so comments and layout of the
mutated copy change but its behaviour differs from the original by exactly the one mutation.

Usage (from the repository root)::

    python benchmarks/mutation/mutate.py                     # every target of targets.toml
    python benchmarks/mutation/mutate.py --only tlsearch/train/optim.py --jobs 2
    python benchmarks/mutation/mutate.py --sample 60 --seed 0  # a random sample per module
    python benchmarks/mutation/mutate.py --list               # the mutants, without running them
    python benchmarks/mutation/mutate.py --survivors-of run.json  # re-run only a run's survivors
    python benchmarks/mutation/mutate.py --report a.json b.json   # one table from saved runs
    python benchmarks/mutation/mutate.py --resume --json run.json  # go on with an interrupted run

Results also go to ``--json`` (default ``benchmarks/mutation/last-run.json``), rewritten after every
mutant, so an interrupted run keeps what it measured and ``--resume`` runs only the rest. ``--survivors-of``
is for after writing tests: it runs again only the mutants that survived (the others were killed
and a new test cannot revive them); ``--report`` merges saved runs, a later run's outcome of the
same mutant replacing an earlier one's, and prints the table with the current ``equivalent.toml``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import gc
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomllib
from pytest import hookimpl as pytest_hookimpl

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

_COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BINOP_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Pow: ast.Mult,
    ast.Mod: ast.FloorDiv,
}
# Calls whose removal changes only what a person sees, never what is computed.
_QUIET_CALLS = {"print", "debug", "info", "warning", "warn", "log", "echo", "secho", "emit"}


@dataclass(frozen=True)
class Mutant:
    module: str  # path relative to the repository root
    index: int  # the index of the node in ast.walk order
    line: int
    change: str
    source_line: str = ""  # the original line, stripped: what equivalent.toml matches on
    end_line: int = 0  # the last line of the mutated node (coverage matches on line..end_line)

    @property
    def lines(self) -> set[int]:
        return set(range(self.line, max(self.line, self.end_line) + 1))

    @property
    def key(self) -> str:
        return f"{self.module}:{self.line}:{self.index}"


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed | survived | uncovered | timeout | error
    seconds: float
    detail: str = ""


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of docstring expressions (never mutated)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0]))
    return found


def _skipped_regions(tree: ast.AST) -> set[int]:
    """ids of nodes inside annotations, ``__all__``, ``TYPE_CHECKING`` blocks and raise messages."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign):
            mark(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            mark(node.returns)
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            mark(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            mark(node)
        if isinstance(node, ast.Raise):
            mark(node.exc)  # the message of an error: its text is not behaviour the tests pin
            skip.discard(id(node.exc))
    return skip


def _call_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _mutations(node: ast.AST) -> Iterator[tuple[str, ast.AST | None]]:
    """(description, replacement) pairs for one node; the replacement None means 'delete'."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        op = type(node.ops[0])
        if op in _COMPARE_SWAPS:
            compare = copy.deepcopy(node)
            compare.ops = [_COMPARE_SWAPS[op]()]
            yield f"{op.__name__} -> {_COMPARE_SWAPS[op].__name__}", compare
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAPS:
        binop = copy.deepcopy(node)
        binop.op = _BINOP_SWAPS[type(node.op)]()
        yield f"{type(node.op).__name__} -> {type(binop.op).__name__}", binop
    elif isinstance(node, ast.AugAssign) and type(node.op) in _BINOP_SWAPS:
        aug = copy.deepcopy(node)
        aug.op = _BINOP_SWAPS[type(node.op)]()
        yield f"{type(node.op).__name__}= -> {type(aug.op).__name__}=", aug
    elif isinstance(node, ast.BoolOp):
        boolop = copy.deepcopy(node)
        boolop.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield f"{type(node.op).__name__} -> {type(boolop.op).__name__}", boolop
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "drop not", copy.deepcopy(node.operand)
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        yield f"{node.value} -> {not node.value}", ast.Constant(not node.value)
    elif (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and type(node.value) is not bool
    ):
        value = node.value
        replacement = value + 1 if isinstance(value, int) else (value * 2 if value else 1.0)
        yield f"{value!r} -> {replacement!r}", ast.Constant(replacement)
    elif isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):
            yield "return x -> return None", ast.Return(value=None)
    elif (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and _call_name(node.value) not in _QUIET_CALLS
    ):
        yield f"drop call {_call_name(node.value) or '…'}()", None


def enumerate_mutants(module: str) -> list[tuple[Mutant, ast.AST]]:
    """Every mutant of ``module``, each with the mutated tree."""
    source = (ROOT / module).read_text()
    tree = ast.parse(source)
    skip = _skipped_regions(tree) | _docstring_nodes(tree)
    nodes = list(ast.walk(tree))
    found: list[tuple[Mutant, ast.AST]] = []
    for index, node in enumerate(nodes):
        if id(node) in skip:
            continue
        for change, _ in _mutations(node):
            mutated = ast.parse(source)
            target = list(ast.walk(mutated))[index]
            _, replacement = next(m for m in _mutations(target) if m[0] == change)
            if not _replace(mutated, target, replacement):
                continue
            ast.fix_missing_locations(mutated)
            line = getattr(node, "lineno", 0)
            text = source.splitlines()[line - 1].strip() if line else ""
            end = getattr(node, "end_lineno", None) or line
            found.append((Mutant(module, index, line, change, text, end), mutated))
    return found


def _replace(tree: ast.AST, target: ast.AST, replacement: ast.AST | None) -> bool:
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if isinstance(value, list) and target in value:
                position = value.index(target)
                if replacement is None:
                    value[position] = ast.Pass()
                else:
                    ast.copy_location(replacement, target)
                    value[position] = replacement
                return True
            if value is target and replacement is not None:
                ast.copy_location(replacement, target)
                setattr(parent, field, replacement)
                return True
    return False


def _copy_tree(dest: Path) -> None:
    for name in ("tlsearch", "plugins", "tests", "studies", "examples", "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(
                src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
            )
        elif src.exists():
            shutil.copy2(src, dest / name)


_CO_OPTIMIZED = 0x1  # set on function code objects; module and class bodies run without it


def _preload(tree: Path) -> list[str]:
    """Import once, in this process, the third-party modules the package and its tests import.

    Every mutant then runs in a ``fork`` of this process: the interpreter, torch, timm, optuna and
    pytest are already loaded, and only ``tlsearch`` (never imported here) is imported afresh from
    the mutated copy. That turns the 10–45 s a mutant cost as a new ``python -m pytest`` into the
    time its tests take.
    """
    probe = (
        "import sys, importlib, pkgutil\n"
        "import tlsearch\n"
        "for m in pkgutil.walk_packages(tlsearch.__path__, 'tlsearch.'):\n"
        "    if m.name.endswith('__main__'): continue\n"
        "    try: importlib.import_module(m.name)\n"
        "    except Exception: pass\n"
        "import pytest\n"
        "std = set(sys.stdlib_module_names)\n"
        "own = {'tlsearch', 'tlsearch_builtins', 'tests', 'conftest'}\n"
        "print(' '.join(sorted({n.split('.')[0] for n in sys.modules} - std - own)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=tree, env=_child_env(tree), capture_output=True, text=True
    )
    lazy = ["_pytest", "timm", "torch.onnx", "onnxscript"]  # imported inside functions, not at import
    names = [n for n in proc.stdout.split() if not n.startswith("_")] + lazy
    loaded = []
    for name in names:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception:  # noqa: BLE001 - an optional module that does not import here is just not preloaded
            pass
    gc.freeze()  # the preloaded heap is never collected again: no child's gc walks it
    leaked = [n for n in sys.modules if n.split(".")[0] in ("tlsearch", "tlsearch_builtins")]
    if leaked:  # the mutated package must be imported fresh in every child
        raise RuntimeError(f"preloading imported the package under test: {leaked[:5]}")
    return loaded


def _child_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'plugins'}", OMP_NUM_THREADS="1")
    env.pop("PYTEST_ADDOPTS", None)
    return env


class _LineRecorder:
    """A pytest plugin tracing which lines of the target modules each test runs.

    Lines run outside any test, or in a module or class body (import time), go to ``""``: a mutant
    there runs against every test. Lines run while a fixture is set up count for every test that
    uses the fixture (a session fixture runs once but every later test depends on what it did).
    """

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files  # absolute path → module path relative to the tree
        self.lines: dict[str, set[tuple[str, int]]] = {"": set()}
        self.order: list[str] = []
        self._stack: list[set[tuple[str, int]]] = [self.lines[""]]
        self._fixture_lines: dict[int, set[tuple[str, int]]] = {}

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            where = (self.files[frame.f_code.co_filename], frame.f_lineno)
            if frame.f_code.co_flags & _CO_OPTIMIZED:
                self._stack[-1].add(where)
            else:
                self.lines[""].add(where)
        return self._local

    def _global(self, frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename in self.files:
            return self._local
        return None

    def start(self) -> None:
        threading.settrace(self._global)
        sys.settrace(self._global)

    @pytest_hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Iterator[None]:
        self._stack.append(set())
        try:
            yield
        finally:
            seen = self._stack.pop()
            self._fixture_lines.setdefault(id(fixturedef), set()).update(seen)
            self._stack[-1].update(seen)

    @pytest_hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> Iterator[None]:
        own: set[tuple[str, int]] = set()
        self._stack.append(own)
        try:
            yield
        finally:
            self._stack.pop()
            for name in item.fixturenames:
                for fixturedef in item._fixtureinfo.name2fixturedefs.get(name, ()):
                    own.update(self._fixture_lines.get(id(fixturedef), ()))
            self.lines[item.nodeid] = own
            self.order.append(item.nodeid)


def _fork_pytest(
    tree: Path, args: list[str], log: Path, recorder: _LineRecorder | None = None, result: Path | None = None
) -> int:
    """Fork a child that runs pytest on ``args`` in ``tree`` and exits with its code; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 3
    try:
        os.setpgid(0, 0)  # its own process group, so a timeout kills whatever it started too
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(tree)
        os.environ.clear()
        os.environ.update(_child_env(tree))
        sys.path[:0] = [str(tree), str(tree / "plugins")]
        import pytest

        plugins: list[object] = []
        if recorder is not None:
            recorder.start()
            plugins.append(recorder)
        # no:unraisableexception: its gc.collect() at exit walks the whole preloaded heap (~3 s);
        # no:anyio: a plugin no test uses that costs a second to load.
        base = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:unraisableexception", "-p", "no:anyio"]
        base.append("--no-header")
        code = int(pytest.main([*base, *args], plugins=plugins))
        if recorder is not None and result is not None:
            sys.settrace(None)
            threading.settrace(None)
            lines = {k: sorted(v) for k, v in recorder.lines.items()}
            result.write_text(json.dumps({"order": recorder.order, "lines": lines}))
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not return into the harness
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, deadline: float) -> int | None:
    """The child's exit code, or None after killing it at ``deadline``."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.02)


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1] if lines else ""


@dataclass
class Coverage:
    """Which tests of a target's test set run each line of each target module (one clean run)."""

    order: list[str]
    lines: dict[str, set[tuple[str, int]]]
    seconds: float

    def tests_for(self, mutant: Mutant) -> list[str] | None:
        """The node ids to run against ``mutant`` ([] when no test runs its lines, None for all)."""
        wanted = {(mutant.module, n) for n in mutant.lines}
        if wanted & self.lines[""]:
            return None
        return [t for t in self.order if wanted & self.lines.get(t, set())]


def clean_run(tree: Path, tests: list[str], modules: list[str], scratch: Path) -> Coverage:
    """Run ``tests`` on the unmutated tree, tracing the lines of ``modules``; exit if they fail."""
    files = {str((tree / m).resolve()): m for m in modules}
    log, result = scratch / "clean.log", scratch / "clean.json"
    start = time.monotonic()
    rc = _wait(_fork_pytest(tree, tests, log, _LineRecorder(files), result), start + 3600)
    if rc != 0:
        print(f"the clean tree fails {tests} (exit {rc}): {_tail(log)}", file=sys.stderr)
        raise SystemExit(2)
    data = json.loads(result.read_text())
    lines = {k: {(m, n) for m, n in v} for k, v in data["lines"].items()}
    return Coverage(data["order"], lines, time.monotonic() - start)


def load_targets(path: Path) -> dict[str, list[str]]:
    data = tomllib.loads(path.read_text())
    return {module: list(spec["tests"]) for module, spec in data["targets"].items()}


def load_equivalent(path: Path) -> dict[tuple[str, str, str], tuple[str, str]]:
    """Survivors judged by a person: (module, source line, change) → (kind, why).

    ``[[equivalent]]`` entries cannot alter behaviour; ``[[cuda_only]]`` entries are code that runs
    only on a CUDA device, so a CPU run cannot measure them (not equivalent: a GPU run decides).
    Both leave the figure's denominator, and the table counts them apart.
    """
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text())
    return {
        (e["module"], e["line"].strip(), e["change"]): (kind, e["why"])
        for kind in ("equivalent", "cuda_only")
        for e in data.get(kind, [])
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=Path, default=HERE / "targets.toml")
    parser.add_argument("--only", action="append", default=[], help="a module path (repeatable)")
    parser.add_argument("--sample", type=int, default=0, help="at most this many mutants per module (random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shuffle",
        action="store_true",
        help="run the mutants in random order (a run stopped early is a sample)",
    )
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--timeout-factor", type=float, default=3.0, help="× the clean run's time")
    parser.add_argument("--list", action="store_true", help="print the mutants and stop")
    parser.add_argument("--json", type=Path, default=HERE / "last-run.json")
    parser.add_argument("--equivalent", type=Path, default=HERE / "equivalent.toml")
    parser.add_argument(
        "--survivors-of", type=Path, help="a saved run (--json): run only the mutants that survived it"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the outcomes already in --json and run only the rest"
    )
    parser.add_argument(
        "--all-tests",
        action="store_true",
        help="run every test of the target, not only those that run the line",
    )
    parser.add_argument(
        "--report", type=Path, nargs="+", help="saved runs to merge into one table (runs nothing)"
    )
    args = parser.parse_args(argv)

    if args.report:
        report(merge_runs(args.report), load_equivalent(args.equivalent))
        return 0

    targets = load_targets(args.targets)
    if args.only:
        unknown = [m for m in args.only if m not in targets]
        if unknown:
            parser.error(f"not a target of {args.targets.name}: {unknown}; targets: {sorted(targets)}")
        targets = {m: targets[m] for m in args.only}

    rng = random.Random(args.seed)
    plan: list[tuple[Mutant, ast.AST, list[str]]] = []
    for module, tests in targets.items():
        mutants = enumerate_mutants(module)
        if args.sample and len(mutants) > args.sample:
            mutants = rng.sample(mutants, args.sample)
        mutants.sort(key=lambda pair: (pair[0].line, pair[0].index))
        plan.extend((m, tree, tests) for m, tree in mutants)
    if args.shuffle:  # any prefix of the run is then a simple random sample of the planned mutants
        rng.shuffle(plan)
    if args.survivors_of:
        wanted = {o.mutant.key for o in load_run(args.survivors_of) if o.status in _SURVIVED}
        plan = [item for item in plan if item[0].key in wanted]
    if args.list:
        for mutant, _, _ in plan:
            print(f"{mutant.module}:{mutant.line}: {mutant.change}")
        print(f"{len(plan)} mutants")
        return 0

    previous = load_run(args.json) if args.resume and args.json.exists() else []
    seen = {o.mutant.key for o in previous}
    plan = [item for item in plan if item[0].key not in seen]
    outcomes = _execute(plan, args, previous)
    report(outcomes, load_equivalent(args.equivalent))
    return 0


def _execute(
    plan: list[tuple[Mutant, ast.AST, list[str]]], args: argparse.Namespace, previous: list[Outcome]
) -> list[Outcome]:
    """Run the plan: one clean traced run per test set, then each mutant in a forked child."""
    workdirs = [Path(tempfile.mkdtemp(prefix=f"tlsearch-mutant-{i}-")) for i in range(args.jobs)]
    scratch = Path(tempfile.mkdtemp(prefix="tlsearch-mutant-logs-"))
    for tree in workdirs:
        _copy_tree(tree)
    outcomes = list(previous)

    def save(outcome: Outcome) -> None:
        outcomes.append(outcome)
        mark = {"killed": ".", "timeout": "t", "survived": "S", "uncovered": "u", "error": "E"}
        print(mark[outcome.status], end="", flush=True)
        args.json.write_text(
            json.dumps([asdict(o) for o in outcomes], indent=1) + "\n"
        )  # a partial run is kept

    try:
        loaded = _preload(workdirs[0])
        print(f"preloaded {len(loaded)} modules", flush=True)
        coverage: dict[tuple[str, ...], Coverage] = {}

        def coverage_of(tests: tuple[str, ...]) -> Coverage:  # the clean run of a test set, when first needed
            if tests not in coverage:
                modules = sorted({m.module for m, _, t in plan if tuple(t) == tests})
                coverage[tests] = clean_run(workdirs[0], list(tests), modules, scratch)
                print(f"\nclean run of {list(tests)}: {coverage[tests].seconds:.0f} s", flush=True)
            return coverage[tests]

        free = list(workdirs)
        serial = 0
        restore: dict[Path, tuple[str, int, int]] = {}
        pending: dict[int, tuple[Mutant, Path, str, float, float]] = {}
        queue = list(plan)
        while queue or pending:
            while queue and free:
                mutant, mutated, tests = queue.pop(0)
                if tuple(tests) not in coverage and pending:
                    queue.insert(0, (mutant, mutated, tests))  # the clean run needs workdirs[0] untouched
                    break
                cov = coverage_of(tuple(tests))
                selected = None if args.all_tests else cov.tests_for(mutant)
                if selected == []:
                    save(Outcome(mutant, "uncovered", 0.0, "no test of the target runs this line"))
                    continue
                tree = free.pop()
                path = tree / mutant.module
                original = path.read_text()
                stat = path.stat()
                path.write_text(ast.unparse(mutated) + "\n")
                # A .pyc is checked against its source's mtime (in seconds) and size: a mutant's
                # source gets an mtime no other mutant and not the original has, so no child reads
                # bytecode compiled from another version (and the tests' .pyc stay cached).
                serial += 1
                os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + serial * 1_000_000_000))
                restore[path] = (original, stat.st_atime_ns, stat.st_mtime_ns)
                log = scratch / f"{tree.name}.log"
                start = time.monotonic()
                deadline = start + max(60.0, cov.seconds * args.timeout_factor)
                pid = _fork_pytest(tree, list(tests) if selected is None else selected, log)
                pending[pid] = (mutant, tree, original, start, deadline)
            for pid, (mutant, tree, original, start, deadline) in list(pending.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done and time.monotonic() < deadline:
                    continue
                rc = os.waitstatus_to_exitcode(status) if done else _wait(pid, 0.0)
                del pending[pid]
                original, atime, mtime = restore.pop(tree / mutant.module)
                (tree / mutant.module).write_text(original)
                os.utime(tree / mutant.module, ns=(atime, mtime))
                free.append(tree)
                seconds = time.monotonic() - start
                tail = _tail(scratch / f"{tree.name}.log")
                if rc is None:
                    save(
                        Outcome(mutant, "timeout", seconds, "timeout")
                    )  # counted as killed: the tests noticed
                elif rc == 0:
                    save(Outcome(mutant, "survived", seconds, tail))
                elif rc in (1, 2):  # a failing test, or an import/collection error the mutant caused
                    save(Outcome(mutant, "killed", seconds, tail))
                else:
                    save(Outcome(mutant, "error", seconds, f"exit {rc}: {tail}"))
            time.sleep(0.02)
        print()
    finally:
        for tree in workdirs:
            shutil.rmtree(tree, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return outcomes


def load_run(path: Path) -> list[Outcome]:
    """The outcomes of a run saved with ``--json``."""
    return [
        Outcome(Mutant(**o["mutant"]), o["status"], o["seconds"], o["detail"])
        for o in json.loads(path.read_text())
    ]


def merge_runs(paths: list[Path]) -> list[Outcome]:
    """The outcomes of several saved runs; a later run's outcome of a mutant replaces an earlier one's."""
    merged: dict[str, Outcome] = {}
    for path in paths:
        merged.update((o.mutant.key, o) for o in load_run(path))
    return list(merged.values())


_SURVIVED = ("survived", "uncovered")  # a line no test runs counts as a survivor, never as killed


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion k/n (for a sampled figure)."""
    if not n:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def report(outcomes: list[Outcome], judged: dict[tuple[str, str, str], tuple[str, str]]) -> None:
    """A table per module; judged survivors (equivalent, CUDA-only) leave the denominator."""

    def judgement(o: Outcome) -> tuple[str, str] | None:
        if o.status not in _SURVIVED:
            return None
        return judged.get((o.mutant.module, o.mutant.source_line, o.mutant.change))

    by_module: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_module.setdefault(outcome.mutant.module, []).append(outcome)
    print(
        "\n| module | mutants | killed | survived | equivalent | CUDA only | killed % |"
        "\n|---|---:|---:|---:|---:|---:|---:|"
    )
    total = killed = 0
    for module, items in sorted(by_module.items()):
        kinds = [(j or ("", ""))[0] for j in map(judgement, items)]
        k = sum(o.status in ("killed", "timeout") for o in items)
        e, c = kinds.count("equivalent"), kinds.count("cuda_only")
        s = sum(o.status in _SURVIVED for o in items) - e - c
        counted = k + s
        total += counted
        killed += k
        share = f"{100 * k / counted:.0f} %" if counted else "–"
        print(f"| {module} | {len(items)} | {k} | {s} | {e} | {c} | {share} |")
    if total:
        low, high = wilson(killed, total)
        print(
            f"| **all** | {len(outcomes)} | {killed} | {total - killed} | | | {100 * killed / total:.1f} % |"
            f"\n\n95 % Wilson interval of the killed share: {100 * low:.1f}–{100 * high:.1f} %"
        )
    survivors = sorted(
        (o for o in outcomes if o.status in _SURVIVED), key=lambda o: (o.mutant.module, o.mutant.line)
    )
    if survivors:
        print("\nsurvivors:")
        for o in survivors:
            j = judgement(o)
            note = f"  ({j[0].replace('_', ' ')}: {j[1]})" if j else ""
            if o.status == "uncovered":
                note += "  (no test runs this line)"
            print(f"  {o.mutant.module}:{o.mutant.line}: {o.mutant.change}: {o.mutant.source_line}{note}")
    errors = [o for o in outcomes if o.status == "error"]
    for o in errors:
        print(f"  error {o.mutant.module}:{o.mutant.line}: {o.mutant.change}: {o.detail}")


if __name__ == "__main__":
    raise SystemExit(main())
