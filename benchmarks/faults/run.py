"""Fault injection against the real CLI: prints the table of issue 13's "Measured" section.

    python benchmarks/faults/run.py                 # every scenario once
    python benchmarks/faults/run.py --runs 3 -k disk  # the disk-full rows, three times each

Each row: the scenario, how many runs, how many held (``n_trials`` exact, 0 completed trials
lost, and the scenario's own bar) and failed, and the last run's note. The disk-full rows mount a
tmpfs, so they need root; elsewhere they are reported as skipped. Exit code 1 if any run failed.
Scenarios live in ``scenarios.py`` (storage and kills), ``scenarios_postgres.py`` (a PostgreSQL
server's full disk; needs its server binaries), ``scenarios_signals.py`` and
``scenarios_inputs.py`` (crafted files); add one with ``@scenario("…")``.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import scenarios  # noqa: F401 - registers the scenarios
import scenarios_inputs  # noqa: F401
import scenarios_postgres  # noqa: F401
import scenarios_signals  # noqa: F401
from harness import SCENARIOS, Outcome, Sandbox, Skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1, help="runs of each scenario (default 1)")
    parser.add_argument("-k", dest="only", default="", help="only scenarios whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the sandboxes (printed) to inspect")
    parser.add_argument("-v", dest="verbose", action="store_true", help="print each run's CLI output")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    chosen = {name: f for name, f in SCENARIOS.items() if args.only.lower() in name.lower()}
    if not chosen:
        parser.error(f"no scenario matches {args.only!r}; scenarios: {', '.join(SCENARIOS)}")

    from tlsearch.demo import make_shapes

    work = Path(tempfile.mkdtemp(prefix="tlsearch-faults-"))
    data = make_shapes(work / "shapes", per_class=12, val_per_class=4, size=32, seed=0)
    rows = []
    failed_any = False
    for name, function in chosen.items():
        held = failed = 0
        note = ""
        for run in range(args.runs):
            sandbox = Sandbox(root=work / f"{function.__name__}-{run}", data=data)
            sandbox.root.mkdir()
            started = time.monotonic()
            try:
                result: Outcome | None = function(sandbox)
            except Skip as exc:
                result, note = None, f"skipped: {exc}"
            except Exception as exc:
                result, note = None, f"error: {type(exc).__name__}: {exc}"[:200]
                failed += 1
                traceback.print_exc()
            if result is not None:
                held += result.held
                failed += not result.held
                note = f"{result.complete}/{result.expected} complete, {result.lost} lost; {result.note}"
            if args.verbose or (result is not None and not result.held):
                print("\n".join(sandbox.log), file=sys.stderr)
            print(
                f"  {name} [{run + 1}/{args.runs}] {time.monotonic() - started:.0f} s: {note}",
                file=sys.stderr,
            )
        failed_any |= failed > 0
        rows.append((name, held + failed, held, failed, note))

    print(
        f"\nmachine: {platform.node()} ({platform.machine()}, {platform.python_version()}), {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print("\n| scenario | runs | held | failed | last run |\n|---|---:|---:|---:|---|")
    for name, runs, held, failed, note in rows:
        print(f"| {name} | {runs} | {held} | {failed} | {note} |")
    if args.keep:
        print(f"\nsandboxes kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed_any else 0


if __name__ == "__main__":
    sys.exit(main())
