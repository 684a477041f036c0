"""The images of a study, as its trials need them: decoded once per preprocessing, in one process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlsearch.data import DecodedImages, ImageList, decode_images
from tlsearch.preprocessing import DataConfig
from tlsearch.train.targets import TargetScale

__all__ = ["StudyData"]


@dataclass
class StudyData:
    """The study's train/val images, decoded once per preprocessing and kept for all trials of a process.

    Decoding shows a tqdm bar when ``progress``, or reports ``on_progress(task, done, total)``
    instead (``task`` says what is decoded, e.g. ``decoding train images at 64px``).
    """

    train: ImageList
    val: ImageList
    cache_dir: Any
    on_bad_image: str = "error"
    progress: bool = True
    on_progress: Callable[[str, int, int], None] | None = None
    _decoded: dict[DataConfig, tuple[DecodedImages, DecodedImages]] = field(default_factory=dict)

    @property
    def labels(self) -> list[str] | None:
        return self.train.classes

    @property
    def num_outputs(self) -> int:
        return self.train.num_outputs

    @property
    def target_scale(self) -> TargetScale | None:
        """Regression: the mean and std of the training split's targets, which every trial of the
        study trains with (:mod:`tlsearch.train.targets`); None for classification."""
        if self.train.classes is not None or len(self.train) == 0:
            return None
        return TargetScale.of(np.asarray(self.train.targets, dtype=np.float64))

    def decoded(self, config: DataConfig) -> tuple[DecodedImages, DecodedImages]:
        if config not in self._decoded:
            self._decoded[config] = (
                self._decode(self.train, config, f"decoding train images at {config.input_size}px"),
                self._decode(self.val, config, f"decoding val images at {config.input_size}px"),
            )
        return self._decoded[config]

    def _decode(self, images: ImageList, config: DataConfig, task: str) -> DecodedImages:
        report = self.on_progress
        return decode_images(
            images,
            config,
            cache_dir=self.cache_dir,
            on_bad_image=self.on_bad_image,
            progress=self.progress,
            description=task,
            on_progress=None if report is None else lambda done, total: report(task, done, total),
        )
