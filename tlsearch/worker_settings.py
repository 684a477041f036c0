"""How one worker takes part in a study: its heartbeat, when it counts another's trial as lost,
when it gives up. One object instead of the keyword arguments that were threaded through the search.

``HEARTBEAT_INTERVAL`` and ``GRACE_PERIOD`` are the defaults of ``tlsearch worker
--heartbeat-interval/--grace-period`` and of every storage tlsearch opens.
"""

from __future__ import annotations

from dataclasses import dataclass

#: seconds between a running trial's heartbeats (RDB storages, and the journal's own)
HEARTBEAT_INTERVAL = 30
#: seconds without a heartbeat after which a running trial counts as lost (failed and requeued)
GRACE_PERIOD = 120


@dataclass(frozen=True)
class WorkerSettings:
    """Settings of the workers of a study run.

    ``workers``: local worker processes (1: this process runs the trials itself; N > 1: N
    processes, one per visible GPU or a share of the CPU cores each, see
    :mod:`tlsearch.search.workers`; 0: only create the study, with its warm start, for workers
    started elsewhere). ``join``: take part in a study someone else started, without
    resetting its deadline or warm-starting it (what ``tlsearch worker`` does). ``rank``: this
    worker's number among the local workers (shifts its sampler's seed; default: the
    ``TLSEARCH_WORKER_RANK`` environment variable, else 0). ``max_failures_in_a_row``: stop after
    that many failed trials in a row (None: never; see
    :class:`~tlsearch.search.failures.FailurePolicy`).
    """

    workers: int = 1
    join: bool = False
    rank: int | None = None
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    grace_period: int = GRACE_PERIOD
    max_failures_in_a_row: int | None = 10

    def __post_init__(self) -> None:
        for name, low in (("workers", 0), ("heartbeat_interval", 1), ("grace_period", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"WorkerSettings.{name} must be an integer >= {low} but got {value!r}")
        if self.max_failures_in_a_row is not None and self.max_failures_in_a_row < 1:
            raise ValueError(
                f"WorkerSettings.max_failures_in_a_row must be >= 1 or None but got {self.max_failures_in_a_row!r}"
            )
        if self.rank is not None and self.rank < 0:
            raise ValueError(f"WorkerSettings.rank must be >= 0 or None but got {self.rank!r}")
        if self.join and self.workers > 1:
            raise ValueError("WorkerSettings: join=True runs this process as one worker; workers must be 1")
