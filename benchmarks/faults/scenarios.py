"""The fault scenarios: each injects one fault into a real ``tlsearch run`` and checks the study.

Add a row by writing a function ``(sandbox) -> Outcome`` here (or in a module imported by
``run.py``) and decorating it with ``@scenario("what is done")``; see :mod:`harness`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from harness import Outcome, Sandbox, complete_trials, fill, outcome, scenario, small_disk, wait_for

SLOW_PLUGIN = textwrap.dedent('''
    import time
    from tlsearch import hookimpl
    from tlsearch.kinds import Regularizer

    class Slow(Regularizer):
        """Sleeps before training, so that a trial can be killed in the middle of it."""
        name = "slow"

        def setup(self, model, *, num_outputs, task):
            time.sleep(3)

    @hookimpl
    def tlsearch_register_regularizers(register):
        register.add(Slow)
''')

HOLD_LOCK_AND_DIE = textwrap.dedent("""
    import os, signal, sys
    from tlsearch.search.storage import make_storage
    make_storage(sys.argv[1])._backend._lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)
""")


@scenario("torn journal tail (partial last line), then --n-trials 5")
def torn_tail(sandbox: Sandbox) -> Outcome:
    study, out = sandbox.study(n_trials=3), sandbox.root / "out"
    sandbox.run(study, out)
    journal = str(out / "study.journal")
    before = complete_trials(journal)
    with open(journal, "ab") as f:
        f.write(b'{"op_code":4,"worker_id":"torn-by-the-benchmark","tri')
    done = sandbox.run(study, out, "--n-trials", "5")
    return outcome(journal, before=before, expected=5, note=f"rerun exit {done.returncode}")


def _full_disk(sandbox: Sandbox, *, sqlite: bool) -> Outcome:
    with small_disk(sandbox.root / "disk") as disk:
        study, out = sandbox.study(n_trials=3), disk / "out"
        storage = f"sqlite:///{out / 'study.db'}" if sqlite else str(out / "study.journal")
        args = ("--storage", storage) if sqlite else ()
        sandbox.run(study, out, *args)
        before = complete_trials(storage)
        filler = fill(disk)
        full = sandbox.run(study, out, *args, "--n-trials", "5")
        while_full = len(complete_trials(storage) & before)
        filler.unlink()
        sandbox.run(study, out, *args, "--n-trials", "5")
        traceback = "traceback" if "Traceback" in full.stderr else "no traceback"
        said = (
            "says 'the disk is full'"
            if "the disk is full" in full.stderr
            else "does not say the disk is full"
        )
        note = f"on the full disk: exit {full.returncode}, {traceback}, {said}, {while_full}/{len(before)} readable"
        clear = full.returncode == 1 and traceback == "no traceback" and "the disk is full" in full.stderr
        return outcome(storage, before=before, expected=5, note=note, extra_ok=clear)


@scenario("disk full (16 MiB tmpfs filled), journal, then space freed")
def full_disk_journal(sandbox: Sandbox) -> Outcome:
    return _full_disk(sandbox, sqlite=False)


@scenario("disk full (tmpfs filled), SQLite, then space freed")
def full_disk_sqlite(sandbox: Sandbox) -> Outcome:
    return _full_disk(sandbox, sqlite=True)


@scenario("SIGKILL of run mid-trial, then rerun")
def sigkill_mid_trial(sandbox: Sandbox) -> Outcome:
    plugin = sandbox.root / "slow_plugin.py"
    plugin.write_text(SLOW_PLUGIN)
    study = sandbox.study(n_trials=3, plugins=[plugin])
    _with_slow_regularizer(study)
    out = sandbox.root / "out"
    journal = str(out / "study.journal")
    process = sandbox.start(study, out)
    try:
        started = wait_for(lambda: _count(journal) >= 1, timeout=sandbox.timeout)
        time.sleep(1.5)  # the next trial is asleep in its setup
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    before = complete_trials(journal)
    done = sandbox.run(study, out)
    return outcome(
        journal,
        before=before,
        expected=3,
        note=f"killed after {len(before)} complete, rerun exit {done.returncode}",
        extra_ok=started,
    )


@scenario("stale journal lock (holder SIGKILLed), then --n-trials 2")
def stale_lock(sandbox: Sandbox) -> Outcome:
    study, out = sandbox.study(n_trials=1), sandbox.root / "out"
    started = time.monotonic()
    sandbox.run(study, out)
    first = time.monotonic() - started
    journal = str(out / "study.journal")
    before = complete_trials(journal)
    script = sandbox.root / "hold.py"
    script.write_text(HOLD_LOCK_AND_DIE)
    subprocess.run([sandbox.python, str(script), journal], env=_env(), check=False)
    started = time.monotonic()
    sandbox.run(study, out, "--n-trials", "2")
    second = time.monotonic() - started
    stalled = second > first + 15  # Optuna's grace period for a left lock is 30 s
    note = f"run after the stale lock {second:.1f} s (first run {first:.1f} s)"
    return outcome(journal, before=before, expected=2, note=note, extra_ok=not stalled)


def _count(storage: str) -> int:
    try:
        return len(complete_trials(storage))
    except Exception:  # not created yet
        return 0


def _with_slow_regularizer(study_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    config = yaml.safe_load(study_path.read_text())
    config["space"]["regularizers"] = {"slow": {"enabled": True}}
    study_path.write_text(yaml.safe_dump(config, sort_keys=False))


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
