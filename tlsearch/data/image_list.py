"""The image list every split is: files with their targets, and the check that an image stays
inside its data folder. Its own module so that the readers of each data form
(:mod:`tlsearch.data.sources`, :mod:`tlsearch.data.multilabel`) share it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tlsearch.errors import DataError
from tlsearch.preprocessing import display_path

__all__ = ["ImageList", "check_inside"]


@dataclass
class ImageList:
    """Image files with their targets: class indices (classification), value lists (regression) or
    0/1 label vectors over ``classes`` (multilabel, :mod:`tlsearch.data.multilabel`).

    ``task`` says which, explicitly: left empty it is ``classification`` when ``classes`` is given
    and ``regression`` otherwise (what the two original tasks always meant), so ``classes is None``
    is never the test of the task; multilabel lists set ``task="multilabel"`` and have ``classes``
    (the label vocabulary) too.
    """

    paths: list[Path]
    targets: list[int] | list[list[float]]
    classes: list[str] | None = None  # classification: the classes; multilabel: the label vocabulary
    target_names: list[str] = field(default_factory=list)  # regression: the CSV's target columns
    task: str = ""

    def __post_init__(self) -> None:
        if not self.task:
            self.task = "classification" if self.classes is not None else "regression"
        if self.task == "multilabel" and self.classes is None:
            raise ValueError("a multilabel ImageList needs classes (its label vocabulary)")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.classes is not None else len(self.target_names)

    def subset(self, indices: list[int]) -> ImageList:
        return ImageList(
            [self.paths[i] for i in indices],
            [self.targets[i] for i in indices],  # type: ignore[arg-type]
            self.classes,
            self.target_names,
            self.task,
        )


def check_inside(image: Path, real_root: Path, *, what: str, hint: str, where: str = "") -> None:
    """Refuse ``image`` when it resolves (symlinks followed) outside ``real_root``, naming it."""
    target = image.resolve()
    if real_root not in target.parents:
        raise DataError(
            f"{where}image {display_path(image)!r} resolves to {display_path(target)!r}, outside "
            f"{what} {display_path(real_root)!r}; images must lie inside it ({hint})"
        )
