"""The signal rows: SIGTERM to ``run``, to ``run --workers N``, and to workers started as
``nohup … &`` starts them (SIGINT ignored). The bar beyond the common one: exit 143, no trial
left RUNNING, no process of the study left behind, and a rerun finishes the budget."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from pathlib import Path

from harness import Outcome, Sandbox, complete_trials, outcome, scenario, wait_for

HOLD_PLUGIN = textwrap.dedent('''
    import os, time
    from pathlib import Path
    from tlsearch import hookimpl
    from tlsearch.kinds import Regularizer

    MARKERS = Path(__file__).with_name("markers")

    class Hold(Regularizer):
        """Holds every trial in its setup for a while, so that it can be signalled mid-trial."""
        name = "hold"

        def setup(self, model, *, num_outputs, task):
            MARKERS.mkdir(exist_ok=True)
            (MARKERS / f"{os.getpid()}-{time.monotonic_ns()}").touch()
            time.sleep(20)

    @hookimpl
    def tlsearch_register_regularizers(register):
        register.add(Hold)
''')


def _running(storage: str) -> int:
    import optuna

    from tlsearch.search.storage import make_storage

    study = optuna.load_study(study_name="tiny", storage=make_storage(storage, heartbeat_interval=None))
    return sum(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # not a zombie
    except OSError:
        return False


def _sigterm(sandbox: Sandbox, *, workers: int, nohup: bool) -> Outcome:
    plugin = sandbox.root / "hold_plugin.py"
    plugin.write_text(HOLD_PLUGIN)
    n_trials = 2 * workers
    study = sandbox.study(n_trials=n_trials, plugins=[plugin])
    _with_regularizer(study, "hold")
    out, markers = sandbox.root / "out", sandbox.root / "markers"
    args = ("--workers", str(workers)) if workers > 1 else ()

    def no_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = sandbox.start(study, out, *args, preexec_fn=no_sigint if nohup else None)
    pids: set[int] = set()

    def holding() -> bool:  # every worker has a trial inside the plugin
        if markers.is_dir():
            pids.update(int(p.name.split("-")[0]) for p in markers.glob("*-*"))
        return len(pids) >= workers

    reached = wait_for(holding, timeout=sandbox.timeout)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    code = process.returncode
    left = sorted(pid for pid in pids | {process.pid} if _alive(pid))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    journal = str(out / "study.journal")
    running = _running(journal)
    before = complete_trials(journal)
    done = sandbox.run(study, out)
    note = (
        f"exit {code} on SIGTERM, {running} trial(s) left RUNNING, {len(left)} process(es) left; "
        f"rerun exit {done.returncode}"
    )
    ok = reached and code == 143 and running == 0 and not left
    return outcome(journal, before=before, expected=n_trials, note=note, extra_ok=ok)


@scenario("SIGTERM to run mid-trial (exit 143, trial requeued), then rerun")
def sigterm_run(sandbox: Sandbox) -> Outcome:
    return _sigterm(sandbox, workers=1, nohup=False)


@scenario("SIGTERM to run --workers 2 mid-trial, then rerun")
def sigterm_workers(sandbox: Sandbox) -> Outcome:
    return _sigterm(sandbox, workers=2, nohup=False)


@scenario("SIGTERM to run --workers 2 started as nohup … & (SIGINT ignored), then rerun")
def sigterm_nohup_workers(sandbox: Sandbox) -> Outcome:
    return _sigterm(sandbox, workers=2, nohup=True)


def _with_regularizer(study_path: Path, name: str) -> None:
    import yaml

    config = yaml.safe_load(study_path.read_text())
    config["space"]["regularizers"] = {name: {"enabled": True}}
    study_path.write_text(yaml.safe_dump(config, sort_keys=False))
