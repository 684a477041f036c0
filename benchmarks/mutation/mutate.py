"""A small mutation-testing harness: how many plausible one-line bugs do the tests catch?

Each *mutant* is the source of one module with one small change that a person could plausibly
make by mistake — a comparison flipped (``<`` → ``<=``), an arithmetic operator swapped, ``and``
↔ ``or``, a ``not`` dropped, a number moved (``0`` → ``1``, ``x`` → ``x + 1``), ``True`` ↔
``False``, a call statement removed, a ``return x`` turned into ``return None``. The harness
applies one mutant at a time to a private copy of the repository, runs the test files that target
that module (``pytest -x``, so a killed mutant stops at its first failure), and counts it *killed*
when the tests fail and *survived* when they pass. Survivors are printed with their file, line and
change: each is either a missing test or an equivalent mutant (a change that cannot alter
behaviour), to be judged by a person.

Why our own harness rather than mutmut or cosmic-ray: both rewrite the package in place or need a
per-project runner configuration that clashes with the editable install and the ``plugins/``
layout; this one is 300 lines, needs nothing beyond the standard library and pytest, runs mutants in
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

Results also go to ``--json`` (default ``benchmarks/mutation/last-run.json``). ``--survivors-of``
is for after writing tests: it runs again only the mutants that survived (the others were killed
and a new test cannot revive them); ``--report`` merges saved runs, a later run's outcome of the
same mutant replacing an earlier one's, and prints the table with the current ``equivalent.toml``.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import tomllib

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

    @property
    def key(self) -> str:
        return f"{self.module}:{self.line}:{self.index}"


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed | survived | timeout | error
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
            new = copy.deepcopy(node)
            new.ops = [_COMPARE_SWAPS[op]()]
            yield f"{op.__name__} -> {_COMPARE_SWAPS[op].__name__}", new
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAPS:
        new = copy.deepcopy(node)
        new.op = _BINOP_SWAPS[type(node.op)]()
        yield f"{type(node.op).__name__} -> {type(new.op).__name__}", new
    elif isinstance(node, ast.AugAssign) and type(node.op) in _BINOP_SWAPS:
        new = copy.deepcopy(node)
        new.op = _BINOP_SWAPS[type(node.op)]()
        yield f"{type(node.op).__name__}= -> {type(new.op).__name__}=", new
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield f"{type(node.op).__name__} -> {type(new.op).__name__}", new
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "drop not", copy.deepcopy(node.operand)
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        yield f"{node.value} -> {not node.value}", ast.Constant(not node.value)
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = node.value
        replacement = value + 1 if type(value) is int else (value * 2 if value else 1.0)
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
            found.append((Mutant(module, index, line, change, text), mutated))
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


def _pytest(tree: Path, tests: list[str], timeout: float) -> tuple[int | None, float, str]:
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'plugins'}", OMP_NUM_THREADS="1")
    env.pop("PYTEST_ADDOPTS", None)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, "timeout"
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode, time.perf_counter() - start, tail[-1] if tail else ""


def _run_one(tree: Path, mutant: Mutant, mutated: ast.AST, tests: list[str], timeout: float) -> Outcome:
    path = tree / mutant.module
    original = path.read_text()
    try:
        path.write_text(ast.unparse(mutated) + "\n")
        rc, seconds, tail = _pytest(tree, tests, timeout)
    finally:
        path.write_text(original)
    if rc is None:
        return Outcome(mutant, "timeout", seconds, tail)  # counted as killed: the tests noticed
    if rc == 0:
        return Outcome(mutant, "survived", seconds, tail)
    if rc in (1, 2):  # test failures, or an import/collection error caused by the mutant
        return Outcome(mutant, "killed", seconds, tail)
    return Outcome(mutant, "error", seconds, tail)


def load_targets(path: Path) -> dict[str, list[str]]:
    data = tomllib.loads(path.read_text())
    return {module: list(spec["tests"]) for module, spec in data["targets"].items()}


def load_equivalent(path: Path) -> dict[tuple[str, str, str], str]:
    """Survivors judged equivalent by a person: (module, source line, change) → why."""
    if not path.exists():
        return {}
    entries = tomllib.loads(path.read_text()).get("equivalent", [])
    return {(e["module"], e["line"].strip(), e["change"]): e["why"] for e in entries}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=Path, default=HERE / "targets.toml")
    parser.add_argument("--only", action="append", default=[], help="a module path (repeatable)")
    parser.add_argument("--sample", type=int, default=0, help="at most this many mutants per module (random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--timeout-factor", type=float, default=3.0, help="× the clean run's time")
    parser.add_argument("--list", action="store_true", help="print the mutants and stop")
    parser.add_argument("--json", type=Path, default=HERE / "last-run.json")
    parser.add_argument("--equivalent", type=Path, default=HERE / "equivalent.toml")
    parser.add_argument(
        "--survivors-of", type=Path, help="a saved run (--json): run only the mutants that survived it"
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
    if args.survivors_of:
        wanted = {o.mutant.key for o in load_run(args.survivors_of) if o.status == "survived"}
        plan = [item for item in plan if item[0].key in wanted]
    if args.list:
        for mutant, _, _ in plan:
            print(f"{mutant.module}:{mutant.line}: {mutant.change}")
        print(f"{len(plan)} mutants")
        return 0

    workdirs = [Path(tempfile.mkdtemp(prefix=f"tlsearch-mutant-{i}-")) for i in range(args.jobs)]
    for tree in workdirs:
        _copy_tree(tree)
    try:
        clean: dict[tuple[str, ...], float] = {}
        for tests in {tuple(t) for _, _, t in plan}:
            rc, seconds, tail = _pytest(workdirs[0], list(tests), timeout=3600)
            if rc != 0:
                print(f"the clean tree fails {list(tests)}: {tail}", file=sys.stderr)
                return 2
            clean[tests] = seconds
            print(f"clean run of {len(tests)} test file(s): {seconds:.0f} s", flush=True)

        free = list(workdirs)
        outcomes: list[Outcome] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            pending: dict[concurrent.futures.Future[Outcome], Path] = {}
            queue = list(plan)
            while queue or pending:
                while queue and free:
                    mutant, mutated, tests = queue.pop(0)
                    tree = free.pop()
                    timeout = max(60.0, clean[tuple(tests)] * args.timeout_factor)
                    pending[pool.submit(_run_one, tree, mutant, mutated, tests, timeout)] = tree
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    free.append(pending.pop(future))
                    outcome = future.result()
                    outcomes.append(outcome)
                    mark = {"killed": ".", "timeout": "t", "survived": "S", "error": "E"}[outcome.status]
                    print(mark, end="", flush=True)
        print()
    finally:
        for tree in workdirs:
            shutil.rmtree(tree, ignore_errors=True)

    report(outcomes, load_equivalent(args.equivalent))
    args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1) + "\n")
    return 0


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


def report(outcomes: list[Outcome], equivalent: dict[tuple[str, str, str], str]) -> None:
    """A table per module; equivalent survivors leave the denominator and are listed with why."""

    def why_equivalent(o: Outcome) -> str | None:
        return equivalent.get((o.mutant.module, o.mutant.source_line, o.mutant.change))

    by_module: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_module.setdefault(outcome.mutant.module, []).append(outcome)
    print(
        "\n| module | mutants | killed | survived | equivalent | killed % |\n|---|---:|---:|---:|---:|---:|"
    )
    total = killed = 0
    for module, items in sorted(by_module.items()):
        k = sum(o.status in ("killed", "timeout") for o in items)
        e = sum(o.status == "survived" and why_equivalent(o) is not None for o in items)
        s = sum(o.status == "survived" for o in items) - e
        counted = len(items) - e
        total += counted
        killed += k
        share = f"{100 * k / counted:.0f} %" if counted else "–"
        print(f"| {module} | {len(items)} | {k} | {s} | {e} | {share} |")
    if total:
        print(f"| **all** | | {killed} | {total - killed} | | {100 * killed / total:.1f} % |")
    survivors = sorted((o for o in outcomes if o.status == "survived"), key=lambda o: o.mutant.key)
    if survivors:
        print("\nsurvivors:")
        for o in survivors:
            why = why_equivalent(o)
            note = f"  (equivalent: {why})" if why else ""
            print(f"  {o.mutant.module}:{o.mutant.line}: {o.mutant.change}: {o.mutant.source_line}{note}")
    errors = [o for o in outcomes if o.status == "error"]
    for o in errors:
        print(f"  error {o.mutant.module}:{o.mutant.line}: {o.mutant.change}: {o.detail}")


if __name__ == "__main__":
    raise SystemExit(main())
