"""What a plugin recommends: the configurations a new study tries first (the warm start).

Every plugin class may declare ``portfolio``, a tuple of :class:`PortfolioEntry`, and ``default``
(whether it is in a study's space when the study leaves that section out). The core composes the
warm start from what the study's plugins declare and names none of them
(:mod:`tlsearch.search.portfolio`). What an entry means depends on the kind:

* **freezing strategy** — one warm-start trial: the top-ranked backbone (or the space's first),
  the warm-start head, this strategy with ``params``, the learning rate ``lr``. ``cost="cheap"``
  says the backbone stays frozen (cached features: seconds), so the entry runs before every
  ``"full"`` one, and the best-priority cheap entry is also the trial each further ranked
  backbone gets (with ``search.rank.order_first``).
* **head** — the warm-start trials use the study's head with the best-priority entry (with its
  ``params``); a study whose heads declare none uses its first head.
* **regularizer** — switched on, with ``params``, in every warm-start trial of the same ``cost``
  (and off in the others); ``lr`` and ``priority`` are not used.
* **backbone** — not used: the ranking (or the space's order) picks the backbone.

Entries of the freezing strategies run in order of ``priority`` (lower first) within the budget
(the first ``n_trials // 2``), then cheapest first. Entries that share a ``slot`` are alternatives:
only the best-priority one whose plugin is in the study joins (a layer-decay fine-tune stands in
for a plain one). Values are clipped into the study's ranges; an entry whose trial the study
forbids (a regularizer it forces on) is skipped.

Example, a third-party freezing strategy that recommends itself as a cheap first trial::

    class TopBlocks(FreezingStrategy):
        name = "top_blocks"
        hyperparameters = {"blocks": Int(1, 4, default=1)}
        portfolio = (PortfolioEntry(name="top_blocks_1", params={"blocks": 1}, lr=3e-3, priority=20),)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tlsearch.kinds._names import NAME_PATTERN

COSTS = ("cheap", "full")
#: the training settings a freezing strategy's entry may set for its own trial (``training``)
TRAINING_KEYS = ("epochs", "ema", "warmup", "budget_share")


@dataclass(frozen=True)
class PortfolioEntry:
    """One recommended configuration of a plugin (see the module doc for what each kind's means).

    ``name``: how the study records the trial (``portfolio`` user attribute); ``params``: the
    plugin's own hyperparameters (others take their declared defaults); ``lr``: the trial's
    learning rate (None: the study's default); ``cost``: ``"cheap"`` (frozen backbone, cached
    features) or ``"full"`` (the backbone trains); ``priority``: lower runs sooner (default 100, after every built-in entry); ``slot``:
    entries sharing it are alternatives, the best-priority one present joins.

    ``training`` (freezing strategies' entries): settings of :data:`TRAINING_KEYS` for this trial
    only, where the study does not set them itself: ``epochs`` is a minimum (the trial trains
    ``max(study's epochs, epochs)``; a warm-start fine-tune needs more epochs than a sampled trial
    that the pruner compares early), ``ema`` the decay of the weights' average, ``warmup`` the
    warm-up fraction; a study that sets ``training.ema`` or ``training.warmup`` keeps its own.
    ``budget_share`` (in (0, 1]), in a study with ``search.timeout``: after the trial's first
    epoch its epochs grow to what fits in this share of the time left (never fewer than
    ``epochs``, at most :data:`tlsearch.train.loop.MAX_BUDGET_EPOCHS`), its schedule re-planned
    to end there; a fine-tune still climbing at its recipe's last epoch gets the budget's time
    instead of the probes after it (:meth:`tlsearch.train.Trainer.fit`)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    lr: float | None = None
    cost: str = "full"
    priority: int = 100
    slot: str | None = None
    training: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.training) - set(TRAINING_KEYS))
        if unknown:
            raise ValueError(
                f"portfolio entry {self.name!r}: training sets {unknown}; valid: {', '.join(TRAINING_KEYS)}"
            )
        epochs = self.training.get("epochs")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise ValueError(
                f"portfolio entry {self.name!r}: training epochs must be an int >= 1 but got {epochs!r}"
            )
        share = self.training.get("budget_share")
        if share is not None and (
            isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1
        ):
            raise ValueError(
                f"portfolio entry {self.name!r}: training budget_share must be a number in (0, 1] "
                f"but got {share!r}"
            )
        if not NAME_PATTERN.match(self.name):
            raise ValueError(
                f"portfolio entry name {self.name!r} must be lower-case letters, digits and underscores"
            )
        if self.cost not in COSTS:
            raise ValueError(f"portfolio entry {self.name!r}: cost {self.cost!r} is not one of {COSTS}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"portfolio entry {self.name!r}: lr must be > 0 but got {self.lr}")


def check_portfolio(cls: type) -> None:
    """Refuse, when a plugin class is defined, entries whose ``params`` name no hyperparameter of
    it, and ``training`` on an entry of a kind other than a freezing strategy (only a strategy's
    entry is a warm-start trial of its own; elsewhere the settings would be ignored)."""
    entries = getattr(cls, "portfolio", ())
    declared = getattr(cls, "hyperparameters", {})
    if not isinstance(entries, tuple) or not all(isinstance(e, PortfolioEntry) for e in entries):
        raise TypeError(f"{cls.__name__}.portfolio must be a tuple of PortfolioEntry, got {entries!r}")
    for entry in entries:
        unknown = sorted(set(entry.params) - set(declared))
        if unknown:
            raise TypeError(
                f"{cls.__name__}.portfolio entry {entry.name!r} sets unknown hyperparameter(s) "
                f"{unknown}; declared: {sorted(declared) or '(none)'}"
            )
        kind = getattr(cls, "kind", "")
        if entry.training and kind != "freezing":
            raise TypeError(
                f"{cls.__name__}.portfolio entry {entry.name!r} sets training {sorted(entry.training)}, "
                f"which only a freezing strategy's entry may (its own warm-start trial); a {kind or 'plugin'} "
                "entry's training would be ignored: move it to the strategy's entry or drop it"
            )
