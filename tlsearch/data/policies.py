"""Training augmentation policies, applied to whole batches on the device.

A policy is the study's ``training.augment``:

- ``none``: the images as decoded (plus random erasing, when asked);
- ``crop_flip``: a random resized crop and a horizontal flip per image
  (:func:`~tlsearch.data.augment.random_resized_crop_flip`, one ``grid_sample`` for the batch);
- ``trivial``: crop + flip, then torchvision's ``TrivialAugmentWide`` (one random operation at a
  random strength per image);
- ``randaugment``: crop + flip, then torchvision's ``RandAugment`` (two operations per image at
  ``magnitude`` out of 30 bins; timm's and torchvision's default is 9).

``random_erasing`` (a probability): erase one random rectangle of each chosen image to 0 after
normalisation, i.e. to the dataset's mean colour (torchvision's ``RandomErasing`` default value),
with the area and aspect ranges of Zhong et al. 2020 (``scale=(0.02, 1/3)``, ``ratio=(0.3, 3.3)``).

What torchvision lacks, and is written here: its automatic-augmentation transforms draw one
operation for a whole batched tensor, so the operations run image by image on the device (each
image its own draw; the operations themselves are torchvision's). Erasing is vectorised over the
batch. All random numbers come from CPU generators seeded from the trainer's epoch draws, so a
seed gives the same batches on every device and nothing waits on the GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from tlsearch.errors import ConfigError

POLICIES = ("none", "crop_flip", "trivial", "randaugment")
ERASE_PARAMS = 5  # coin, area, log-aspect, centre x, centre y: uniform [0, 1) each
ERASE_SCALE = (0.02, 1 / 3)
ERASE_RATIO = (0.3, 3.3)


def policy_name(augment: bool | str) -> str:
    """The policy of a ``training.augment`` value: ``true`` / ``false`` are ``crop_flip`` / ``none``."""
    if isinstance(augment, bool):
        return "crop_flip" if augment else "none"
    if augment not in POLICIES:
        raise ConfigError(f"augment {augment!r} is not valid; valid choices: {', '.join(POLICIES)}")
    return augment


@dataclass(frozen=True)
class AugmentPolicy:
    """One trial's augmentation: the policy, RandAugment's magnitude, random erasing's probability."""

    name: str = "crop_flip"
    magnitude: int = 9
    random_erasing: float = 0.0

    def __post_init__(self) -> None:
        policy_name(self.name)
        if not 0 <= self.magnitude <= 30:
            raise ConfigError(f"randaugment_magnitude must be in [0, 30] but got {self.magnitude}")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ConfigError(f"random_erasing must be a probability in [0, 1] but got {self.random_erasing}")

    @property
    def is_random(self) -> bool:
        """Whether the policy changes training images at all."""
        return self.name != "none" or self.random_erasing > 0

    @property
    def crops(self) -> bool:
        return self.name != "none"

    def operations(self) -> v2.Transform | None:
        """torchvision's transform for the per-image operations (None: crop + flip only, or none)."""
        if self.name == "trivial":
            return v2.TrivialAugmentWide()
        if self.name == "randaugment":
            return v2.RandAugment(num_ops=2, magnitude=self.magnitude)
        return None


def apply_operations(images_uint8: torch.Tensor, transform: v2.Transform, *, seed: int) -> torch.Tensor:
    """``transform`` on each image of a uint8 NCHW batch, on its device, each image its own draw.

    The draws come from torch's CPU generator forked and seeded with ``seed`` (the caller's own
    generator gives it), so the global random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(image) for image in images_uint8])


def draw_erase_params(n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 5)`` uniform numbers driving :func:`random_erase` for ``n`` images (CPU)."""
    return torch.rand(n, ERASE_PARAMS, generator=generator)


def random_erase(images: torch.Tensor, params: torch.Tensor, *, probability: float) -> torch.Tensor:
    """Erase one rectangle (to 0) in each image of a float NCHW batch whose coin is below ``probability``.

    ``params`` from :func:`draw_erase_params`, on the batch's device: the rectangle's area is a
    uniform fraction of the image in ``ERASE_SCALE``, its aspect log-uniform in ``ERASE_RATIO``, and
    it lies inside the image.
    """
    n, _, height, width = images.shape
    if params.shape != (n, ERASE_PARAMS):
        raise ValueError(f"params must have shape ({n}, {ERASE_PARAMS}) but got {tuple(params.shape)}")
    rand = params.to(device=images.device, dtype=torch.float32)
    area = ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * rand[:, 1]
    log_lo, log_hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * rand[:, 2])
    h = torch.sqrt(area / aspect).clamp(max=1.0) * height  # in pixels
    w = torch.sqrt(area * aspect).clamp(max=1.0) * width
    top = rand[:, 3] * (height - h)
    left = rand[:, 4] * (width - w)
    rows = torch.arange(height, device=images.device, dtype=torch.float32).view(1, height, 1)
    cols = torch.arange(width, device=images.device, dtype=torch.float32).view(1, 1, width)
    inside = (
        (rows >= top.view(n, 1, 1))
        & (rows < (top + h).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1))
        & (cols < (left + w).view(n, 1, 1))
    )
    erase = inside & (rand[:, 0] < probability).view(n, 1, 1)
    return images.masked_fill(erase.unsqueeze(1), 0.0)
