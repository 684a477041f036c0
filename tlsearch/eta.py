"""How long until a study's budget is done: one honest estimate for the live console and for
``tlsearch status`` alike (standard library only: the CLI imports it before torch or optuna)."""

from __future__ import annotations

from collections.abc import Sequence


def time_left(
    *,
    total: int,
    finished: int,
    durations: Sequence[float],
    running: Sequence[tuple[float, int, int | None]],
    mean: float | None = None,
) -> float | None:
    """Seconds until ``total`` trials have finished, or None when there is no honest estimate.

    ``durations``: the seconds of the trials finished here; ``running``: per running trial, its
    seconds so far, epochs done and epochs planned. A running trial with an epoch done is
    extrapolated at its own pace (a fine-tune runs far longer than the probes before it); one
    without is given the mean trial's time, and when it has already run longer than that there is
    no figure at all (rather than "0 s left" for minutes). Trials not started yet take the mean;
    the running trials' count is taken as the number of workers. ``mean``: what one finished trial
    costs, when the caller knows better than the mean of ``durations`` (``tlsearch status`` charges
    failed trials' time to the finished ones).
    """
    to_finish = total - finished
    if to_finish <= 0:
        return 0.0
    if mean is None:
        mean = sum(durations) / len(durations) if durations else None
    lefts: list[float] = []
    for elapsed, done, epochs in running:
        if epochs and done > 0:
            lefts.append(elapsed / done * max(0, epochs - done))
        elif mean is not None and elapsed < mean:
            lefts.append(mean - elapsed)
        else:
            return None
    queued = max(0, to_finish - len(running))
    if queued and mean is None:
        return None
    parallel = max(1, len(running))
    return max(max(lefts, default=0.0), (sum(lefts) + queued * (mean or 0.0)) / parallel)
