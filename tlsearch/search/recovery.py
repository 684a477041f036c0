"""Trials whose worker died: find them, fail them with the reason, and queue their parameters again.

A worker killed by SIGKILL, the kernel's out-of-memory killer, a reboot or a lost machine leaves its
trial RUNNING for ever, and with TPE's constant liar a RUNNING zombie keeps biasing the sampler.
Every trial therefore records who runs it (user attribute ``worker``: host, boot id, pid and the
process's start time), and every worker sweeps the study when it starts and before each trial:

* a RUNNING trial of a process on *this* machine that no longer exists (or whose pid now belongs
  to another process) is dead at once — no grace period, so rerunning after a crash recovers
  immediately;
* a trial of another machine is dead when its heartbeat is older than the grace period: Optuna's
  own heartbeats on a database (``RDBStorage``), or, on a journal file, which has none, the
  ``heartbeat`` user attribute a tlsearch thread refreshes (:class:`TrialHeartbeat`).

A dead trial gets ``failure`` (the reason), becomes FAIL, and the same parameters are enqueued
(``study.enqueue_trial``) with ``retry_of`` (the dead trial's number) and ``retries`` (how many
times these parameters have been retried), at most ``max_retries`` times. If two workers sweep at
once, the storage lets exactly one of them move the trial to FAIL, so it is queued once.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from tlsearch.errors import StorageUnavailable
from tlsearch.search.storage import has_heartbeat
from tlsearch.worker_settings import GRACE_PERIOD, HEARTBEAT_INTERVAL

WORKER_ATTR = "worker"
HEARTBEAT_ATTR = "heartbeat"
FAILURE_ATTR = "failure"
RETRY_OF_ATTR = "retry_of"
RETRIES_ATTR = "retries"
RETRY_REASON_ATTR = "retry_reason"
MAX_RETRIES = 2
SEED_ATTR = "seed"  # the trial's training seed: a retry reruns with the same one
# per-trial settings a retry must keep (a batch halved after an OOM; the seed, so that the same
# parameters train the same way)
CARRIED_ATTRS = ("batch_size", SEED_ATTR)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a Linux process, or None where /proc cannot tell."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return fields[0], fields[19]


@dataclass(frozen=True)
class WorkerIdentity:
    """Who runs a trial: enough to tell later, on the same machine, whether that process still lives."""

    host: str
    boot: str | None
    pid: int
    start: str | None

    @classmethod
    def current(cls) -> WorkerIdentity:
        stat = _proc_stat(os.getpid())
        boot = _read("/proc/sys/kernel/random/boot_id")
        return cls(
            socket.gethostname(), boot.strip() if boot else None, os.getpid(), stat[1] if stat else None
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def process_alive(info: dict[str, Any]) -> bool | None:
    """Whether the process ``info`` describes still runs; None when it ran on another machine."""
    here = WorkerIdentity.current()
    if info.get("host") != here.host:
        return None
    if info.get("boot") and here.boot and info["boot"] != here.boot:
        return False  # the machine rebooted since
    pid = int(info.get("pid", -1))
    if pid == here.pid:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    if state == "Z":
        return False  # killed, not yet reaped by its parent
    return not (info.get("start") and start != info["start"])  # a different process reusing the pid


def requeue(
    study: optuna.Study,
    trial: FrozenTrial | optuna.Trial,
    *,
    reason: str,
    max_retries: int = MAX_RETRIES,
    overrides: dict[str, Any] | None = None,
) -> bool:
    """Enqueue ``trial``'s parameters again, marked ``retry_of``; False when its retries are used up."""
    retries = int(trial.user_attrs.get(RETRIES_ATTR, 0)) + 1
    if retries > max_retries:
        return False
    attrs = {k: trial.user_attrs[k] for k in CARRIED_ATTRS if k in trial.user_attrs}
    attrs.update(
        {RETRY_OF_ATTR: trial.number, RETRIES_ATTR: retries, RETRY_REASON_ATTR: reason, **(overrides or {})}
    )
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)
    return True


def fail_and_requeue(
    study: optuna.Study, trial: FrozenTrial, *, reason: str, max_retries: int = MAX_RETRIES
) -> bool:
    """Record ``reason``, move the RUNNING ``trial`` to FAIL and requeue it. False if another worker
    finished or swept it first (then that worker requeues it)."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, FAILURE_ATTR, reason)
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    requeue(study, trial, reason=reason, max_retries=max_retries)
    return True


def stale_reason(
    trial: FrozenTrial, *, heartbeat_stale: set[int], grace_period: float, rdb: bool, now: float
) -> str | None:
    """Why the RUNNING ``trial`` is dead, or None while it may still be alive."""
    info: dict[str, Any] = trial.user_attrs.get(WORKER_ATTR) or {}
    alive = process_alive(info) if info else None
    if alive is False:
        return (
            f"worker died: the process running this trial (pid {info['pid']} on {info['host']}) ended "
            f"during it, last seen {_last_seen(trial)}: killed (SIGKILL, the out-of-memory killer) "
            "or ended by a plugin (os.abort, a crash in native code)"
        )
    if alive is True:
        return None
    if trial._trial_id in heartbeat_stale:
        return f"worker lost: no heartbeat for more than {grace_period:.0f}s (host {info.get('host')})"
    if not rdb:
        start = trial.datetime_start.timestamp() if trial.datetime_start else now
        last = float(trial.user_attrs.get(HEARTBEAT_ATTR, start))
        if now - last > grace_period:
            return f"worker lost: no heartbeat for {now - last:.0f}s (> {grace_period:.0f}s) from host {info.get('host')}"
    return None


def _last_seen(trial: FrozenTrial) -> str:
    """When the trial last gave a sign of life: its last heartbeat, or its start."""
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if beat is not None:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(beat))) + " (heartbeat)"
    if trial.datetime_start is not None:
        return trial.datetime_start.strftime("%Y-%m-%d %H:%M:%S") + " (trial start)"
    return "never"


def sweep_stale_trials(
    study: optuna.Study,
    *,
    grace_period: float = GRACE_PERIOD,
    max_retries: int = MAX_RETRIES,
    running: list[FrozenTrial] | None = None,
    heartbeats_checked: bool = False,
) -> list[int]:
    """Fail and requeue every RUNNING trial whose worker is gone; returns their numbers.
    ``running``: the study's RUNNING trials when the caller just read them (one read less).
    ``heartbeats_checked``: Optuna has just failed the trials whose heartbeat went stale (it does
    before each trial of ``study.optimize``), so asking the database for them again is skipped."""
    storage = study._storage
    rdb = has_heartbeat(storage)
    heartbeat_stale: set[int] = set()
    if rdb:
        try:
            if not heartbeats_checked:
                heartbeat_stale = set(storage._get_stale_trial_ids(study._study_id))  # type: ignore[attr-defined]
            grace_period = float(storage.grace_period or 2 * storage.heartbeat_interval)  # type: ignore[attr-defined]
        except AttributeError:
            pass
    swept = []
    now = time.time()
    if running is None:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        reason = stale_reason(
            trial, heartbeat_stale=heartbeat_stale, grace_period=grace_period, rdb=rdb, now=now
        )
        if reason and fail_and_requeue(study, trial, reason=reason, max_retries=max_retries):
            swept.append(trial.number)
    return swept


def requeue_after_heartbeat(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's ``heartbeat_stale_trial_callback``: Optuna failed a stale trial first; requeue it."""
    requeue(study, trial, reason="worker lost: Optuna's heartbeat went stale")


class TrialHeartbeat:
    """Refresh the trial's ``heartbeat`` user attribute from a thread, for storages without Optuna's
    heartbeats (the journal file, the gRPC proxy). A no-op where Optuna beats already. An outage
    of the storage (:class:`~tlsearch.errors.StorageUnavailable`) does not end the thread: it
    beats again at the next interval, so a trial that outlives a proxy restart stays alive."""

    def __init__(self, study: optuna.Study, trial_id: int, *, interval: float = HEARTBEAT_INTERVAL) -> None:
        self.storage = study._storage
        self.trial_id = trial_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> TrialHeartbeat:
        if not has_heartbeat(self.storage) and self.interval > 0:
            self._thread = threading.Thread(target=self._beat, name="tlsearch-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.set_trial_user_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
            except StorageUnavailable:
                continue  # the proxy is away: beat again when it is back (the worker decides to stop)
            except Exception:
                return  # the trial finished (or was swept); nothing left to keep alive

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
