"""Is the best trial better than guessing? The trivial baseline of a study's task, and one line of
warning when the best trial does not beat it.

* classification: always predicting the validation split's most frequent class (its accuracy is
  that class's share of the images), recorded in the study as the user attribute
  ``majority_class`` (``[label, share]``) when a run starts, so a status from the storage alone
  knows it;
* regression: always predicting the mean (R² = 0), so a best R² ≤ 0 learned nothing.

A model no better than that is still exported (it is what the search found), but ``tlsearch run``'s
summary and ``tlsearch status`` say so.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tlsearch.data import ImageList

MAJORITY_ATTR = "majority_class"


def majority_class(images: ImageList) -> tuple[str, float] | None:
    """The most frequent class of ``images`` and its share of them; None for regression and
    multilabel images (a multi-label image has no one class)."""
    if images.task != "classification" or images.classes is None or not len(images):
        return None
    index, count = Counter(int(t) for t in images.targets).most_common(1)[0]  # type: ignore[arg-type]
    return images.classes[index], count / len(images)


def baseline_warning(metrics: dict[str, Any], *, task: str | None, majority: Any = None) -> str | None:
    """One line when the best trial's ``metrics`` are no better than the task's trivial baseline
    (``majority``: ``[label, share]`` of the most frequent validation class); else None."""
    if task == "regression":
        r2 = metrics.get("r2")
        if isinstance(r2, (int, float)) and r2 <= 0:
            return (
                f"warning: the best trial's R² is {r2:.3f}, no better than always predicting the mean "
                "(R² 0); try more epochs, another backbone or more data"
            )
        return None
    accuracy = metrics.get("accuracy")
    if (
        not isinstance(accuracy, (int, float))
        or not isinstance(majority, (list, tuple))
        or len(majority) != 2
    ):
        return None
    label, share = majority
    if accuracy <= float(share) + 1e-9:
        return (
            f"warning: the best trial's accuracy {accuracy:.2%} is no better than always predicting "
            f"the most frequent class {label!r} ({float(share):.2%} of the validation images); try "
            "more epochs, another backbone or more data"
        )
    return None


def study_baseline_warning(study: Any, best_metrics: dict[str, Any]) -> str | None:
    """:func:`baseline_warning` for the best trial of ``study`` (an Optuna study described by a run)."""
    attrs = study.user_attrs
    return baseline_warning(best_metrics, task=attrs.get("task"), majority=attrs.get(MAJORITY_ATTR))
