"""The images of a study, as its trials need them: checked once before the first trial, then
decoded once per preprocessing, in one process."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlsearch.data import DecodedImages, ImageList, check_images, decode_images
from tlsearch.preprocessing import DataConfig
from tlsearch.train.targets import TargetScale

__all__ = ["StudyData"]


@dataclass
class StudyData:
    """The study's train/val images, decoded once per preprocessing and kept for all trials of a process.

    Decoding shows a tqdm bar when ``progress``, or reports ``on_progress(task, done, total)``
    instead (``task`` says what is decoded, e.g. ``decoding train images at 64px``).

    :meth:`check` decodes every image once before the first trial (a study calls it first): a bad
    file then stops the study once, or with ``on_bad_image: skip`` is left out of ``train``/``val``
    for good and counted once; the decoded images of every preprocessing list it in ``skipped``.
    """

    train: ImageList
    val: ImageList
    cache_dir: Any
    on_bad_image: str = "error"
    progress: bool = True
    on_progress: Callable[[str, int, int], None] | None = None
    _decoded: dict[DataConfig, tuple[DecodedImages, DecodedImages]] = field(default_factory=dict)
    _skipped: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def check(self) -> None:
        """Decode every train and val image once (see :mod:`tlsearch.data.check`); raises
        :class:`~tlsearch.errors.DataError` naming a bad file unless ``on_bad_image`` is ``skip``."""
        for split in ("train", "val"):
            if split in self._skipped:
                continue
            task = f"checking {split} images"
            checked = check_images(
                getattr(self, split),
                on_bad_image=self.on_bad_image,
                cache_dir=self.cache_dir,
                description=task,
                on_progress=self._reporter(task),
            )
            setattr(self, split, checked.images)
            self._skipped[split] = checked.skipped

    @property
    def labels(self) -> list[str] | None:
        return self.train.classes

    @property
    def num_outputs(self) -> int:
        return self.train.num_outputs

    @property
    def target_scale(self) -> TargetScale | None:
        """Regression: the mean and std of the training split's targets, which every trial of the
        study trains with (:mod:`tlsearch.train.targets`); None for the other tasks."""
        if self.train.task != "regression" or len(self.train) == 0:
            return None
        return TargetScale.of(np.asarray(self.train.targets, dtype=np.float64))

    def decoded(self, config: DataConfig) -> tuple[DecodedImages, DecodedImages]:
        if config not in self._decoded:
            self._decoded[config] = (
                self._decode("train", config, f"decoding train images at {config.input_size}px"),
                self._decode("val", config, f"decoding val images at {config.input_size}px"),
            )
        return self._decoded[config]

    def _decode(self, split: str, config: DataConfig, task: str) -> DecodedImages:
        images: ImageList = getattr(self, split)
        decoded = decode_images(
            images,
            config,
            cache_dir=self.cache_dir,
            on_bad_image=self.on_bad_image,
            progress=self.progress,
            description=task,
            on_progress=self._reporter(task),
        )
        checked = self._skipped.get(split)
        if not checked:
            return decoded
        return dataclasses.replace(decoded, skipped=sorted(checked + decoded.skipped))

    def _reporter(self, task: str) -> Callable[[int, int], None] | None:
        report = self.on_progress
        return None if report is None else lambda done, total: report(task, done, total)
