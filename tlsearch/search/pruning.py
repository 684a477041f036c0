"""Cost-aware pruning: a pruner stops a weak trial only where stopping it saves real time.

Successive halving treats every trial's epoch as the same unit of budget. In transfer learning
it is not: a linear probe trains a head on cached features (an epoch costs milliseconds) while a
fine-tune runs the whole backbone forward and backward (often 10–100× more). Stopping a probe
after two of four epochs saves almost nothing and throws away a finished measurement; the
budget is in seconds (Quick-Tune, Arango et al., ICLR 2024, makes the same argument for its
cost-aware acquisition). :class:`CostAwarePruner` wraps a pruner and lets a trial go on when:

* it is a warm-start portfolio trial (user attribute ``portfolio``): the portfolio is a handful of
  configurations chosen to be strong, run at full fidelity so that later trials are compared with
  complete learning curves (:mod:`tlsearch.search.portfolio`);
* its epochs are cheap: its seconds per epoch so far are below ``1 / ratio`` of the most
  expensive finished trial's. Timings under :data:`MIN_REFERENCE_SECONDS` per epoch are noise,
  and while no finished trial is that expensive the wrapped pruner decides alone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from tlsearch.search.portfolio import PORTFOLIO_ATTR

MIN_REFERENCE_SECONDS = 0.1


def seconds_per_epoch(trial: FrozenTrial, *, now: datetime | None = None) -> float | None:
    """Wall-clock seconds from the trial's start to ``now`` (its end when finished), per reported
    epoch; None when it has not reported one or has no start time."""
    steps = len(trial.intermediate_values)
    end = trial.datetime_complete or now
    if not steps or trial.datetime_start is None or end is None:
        return None
    return (end - trial.datetime_start).total_seconds() / steps


class CostAwarePruner(optuna.pruners.BasePruner):
    """``pruner``'s decisions, except for portfolio trials and trials whose epochs cost less than
    ``1 / ratio`` of the most expensive finished trial's (see the module docstring)."""

    def __init__(
        self,
        pruner: optuna.pruners.BasePruner,
        *,
        ratio: float = 3.0,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        if ratio <= 1:
            raise ValueError(f"ratio must be > 1 (a cheap trial costs less than 1/ratio); got {ratio}")
        self.pruner = pruner
        self.ratio = ratio
        self.clock = clock

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if not self.pruner.prune(study, trial):
            return False
        if PORTFOLIO_ATTR in trial.user_attrs:
            return False
        return not self.is_cheap(study, trial)

    def is_cheap(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """True when ``trial``'s epochs cost less than ``1 / ratio`` of the most expensive finished
        trial's, and that one's are above :data:`MIN_REFERENCE_SECONDS`."""
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        costs = [c for c in (seconds_per_epoch(t) for t in finished) if c is not None]
        reference = max(costs, default=0.0)
        if reference < MIN_REFERENCE_SECONDS:
            return False
        own = seconds_per_epoch(trial, now=self.clock())
        return own is not None and own < reference / self.ratio
