"""Cost-aware pruning: a pruner stops a weak trial only where stopping it saves real work.

Successive halving treats every trial's epoch as the same unit of budget. In transfer learning
it is not: a linear probe trains a head on cached features (an epoch costs milliseconds) while a
fine-tune runs the whole backbone forward and backward (often 10–100× more). Stopping a probe
after two of four epochs saves almost nothing and throws away a finished measurement (Quick-Tune,
Arango et al., ICLR 2024, makes the same argument for its cost-aware acquisition).
:class:`CostAwarePruner` wraps a pruner and lets a trial go on when:

* it is a warm-start portfolio trial (user attribute ``portfolio``) that has not yet trained
  ``min_portfolio_epochs`` epochs: the portfolio is a handful of configurations chosen to be
  strong, so they get a fair start; after it they follow the same rule as every trial (a weak
  warm-start fine-tune is stopped like any other) (:mod:`tlsearch.search.portfolio`);
* its epochs are cheap: its work per epoch is below ``1 / ratio`` of the most expensive finished
  trial's.

Cost is **work, not seconds** (user attribute ``work``: GFLOP of the epochs so far, written by
the objective from :func:`tlsearch.train.work.epoch_work`): a trial slowed by a busy machine costs
what it costs on an idle one, so one slow trial cannot make every later one look cheap. Trials
without the attribute (studies of older versions) count as unknown and are left out.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from tlsearch.search.portfolio import PORTFOLIO_ATTR

WORK_ATTR = "work"
MIN_PORTFOLIO_EPOCHS = 2
"""Epochs a warm-start trial is never stopped in: successive halving's first rung (its decision
after 2 epochs); from its second rung (after 4 epochs, in studies of 5 or more) it is pruned as
any trial."""


def work_per_epoch(trial: FrozenTrial) -> float | None:
    """GFLOP per epoch the trial trained so far (its ``work`` user attribute); None when unknown."""
    work = trial.user_attrs.get(WORK_ATTR)
    if not isinstance(work, dict):
        return None
    gflop, epochs = work.get("gflop"), work.get("epochs")
    if not isinstance(gflop, (int, float)) or not isinstance(epochs, int) or epochs < 1:
        return None
    return float(gflop) / epochs


class WarmStartGrace(optuna.pruners.BasePruner):
    """``pruner``'s decisions, except for warm-start (portfolio) trials in their first
    ``min_portfolio_epochs`` epochs: a fine-tune known to be strong is not judged against the
    linear probes' first epoch (a probe converges in one, a fine-tune does not); after that it is
    pruned as any trial, so it cannot run the budget out."""

    def __init__(
        self, pruner: optuna.pruners.BasePruner, *, min_portfolio_epochs: int = MIN_PORTFOLIO_EPOCHS
    ) -> None:
        if min_portfolio_epochs < 0:
            raise ValueError(f"min_portfolio_epochs must be >= 0 but got {min_portfolio_epochs}")
        self.pruner = pruner
        self.min_portfolio_epochs = min_portfolio_epochs

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if not self.pruner.prune(study, trial):
            return False
        return not (
            PORTFOLIO_ATTR in trial.user_attrs and len(trial.intermediate_values) <= self.min_portfolio_epochs
        )


class CostAwarePruner(WarmStartGrace):
    """``pruner``'s decisions, except for portfolio trials in their first ``min_portfolio_epochs``
    epochs (:class:`WarmStartGrace`) and trials whose epochs cost less than ``1 / ratio`` of the
    most expensive finished trial's work (see the module docstring)."""

    def __init__(
        self,
        pruner: optuna.pruners.BasePruner,
        *,
        ratio: float = 3.0,
        min_portfolio_epochs: int = MIN_PORTFOLIO_EPOCHS,
    ) -> None:
        if ratio <= 1:
            raise ValueError(f"ratio must be > 1 (a cheap trial costs less than 1/ratio); got {ratio}")
        super().__init__(pruner, min_portfolio_epochs=min_portfolio_epochs)
        self.ratio = ratio

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return super().prune(study, trial) and not self.is_cheap(study, trial)

    def is_cheap(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """True when ``trial``'s epochs cost less work than ``1 / ratio`` of the most expensive
        finished trial's."""
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        reference = max((c for c in map(work_per_epoch, finished) if c is not None), default=0.0)
        own = work_per_epoch(trial)
        return own is not None and own < reference / self.ratio
