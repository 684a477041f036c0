"""Start-up time of the CLI: how long ``tlsearch --help`` and ``tlsearch predict --help`` take, and
which heavy libraries they import, next to a bare ``import torch`` / ``import optuna`` for scale.

Each command runs in a fresh interpreter ``--repeats`` times; the median wall time is printed::

    python benchmarks/bench_startup.py --repeats 5

Target (issue 18): ≤ 0.5 s for ``--help`` and ``predict --help`` on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "optuna", "timm", "onnx", "onnxruntime")

_CLI = (
    "import sys; from tlsearch.cli import main; main(sys.argv[1:], prog_name='tlsearch', standalone_mode=False);"
    f" print('imported:', ' '.join(m for m in {HEAVY!r} if m in sys.modules) or '-', file=sys.stderr)"
)
CASES: dict[str, list[str]] = {
    "tlsearch --help": ["-c", _CLI, "--help"],
    "tlsearch predict --help": ["-c", _CLI, "predict", "--help"],
    "tlsearch run --help": ["-c", _CLI, "run", "--help"],
    "python -c 'import optuna'": ["-c", "import optuna"],
    "python -c 'import torch'": ["-c", "import torch"],
}


def _time(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    imported = [ln for ln in done.stderr.splitlines() if ln.startswith("imported:")]
    return seconds, imported[-1].removeprefix("imported: ") if imported else ""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="fresh interpreters per command (median)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    print(f"{'command':<28} {'median s':>9} {'min s':>7}  heavy imports")
    for name, argv in CASES.items():
        runs = [_time(argv, env) for _ in range(args.repeats)]
        times = [t for t, _ in runs]
        print(f"{name:<28} {statistics.median(times):>9.2f} {min(times):>7.2f}  {runs[-1][1]}")


if __name__ == "__main__":
    main()
