"""Batches on the device: normalising and augmenting whole batches at once.

Augmentation runs on the batch's device (the GPU when there is one) with one ``affine_grid`` +
``grid_sample`` call: a random resized crop (scale and aspect ratio as torchvision's
``RandomResizedCrop``) and a horizontal flip per image.

The random numbers of a whole epoch are drawn up front on the CPU (:func:`draw_crop_params`) and
moved to the device in one copy: drawing them per step from a CPU generator would cost one blocking
host→device copy, i.e. a GPU synchronisation, every step; and drawing them on the CPU keeps results
identical on every device and data placement.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tlsearch.preprocessing import DataConfig

CROP_PARAMS = 5  # area, log-aspect, centre x, centre y, flip coin: uniform [0, 1) each


def normalize(
    images_uint8: torch.Tensor, config: DataConfig, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """NCHW uint8 → NCHW float normalised with the backbone's mean and std."""
    return Normalizer(config, device=images_uint8.device, dtype=dtype)(images_uint8)


class Normalizer:
    """:func:`normalize` with its constants made once on the device (no host→device copy per batch).

    ``(x / 255 - mean) / std`` is computed as ``x * scale + shift`` in one fused multiply-add.
    """

    def __init__(
        self, config: DataConfig, *, device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> None:
        mean = torch.tensor(config.mean, dtype=torch.float64)
        std = torch.tensor(config.std, dtype=torch.float64)
        self.scale = (1.0 / (255.0 * std)).to(device=device, dtype=dtype).view(1, 3, 1, 1)
        self.shift = (-mean / std).to(device=device, dtype=dtype).view(1, 3, 1, 1)
        self.dtype = dtype

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images_uint8.to(self.dtype), self.scale)


def draw_crop_params(n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 5)`` uniform numbers driving :func:`random_resized_crop_flip` for ``n`` images (CPU)."""
    return torch.rand(n, CROP_PARAMS, generator=generator)


def random_resized_crop_flip(
    images: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    params: torch.Tensor | None = None,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """Per-image random resized crop (same output size) and horizontal flip, for a float NCHW batch.

    ``params`` (from :func:`draw_crop_params`, on any device) fixes the random draws; otherwise they
    are drawn from ``generator`` here.
    """
    n = images.shape[0]
    device = images.device
    if params is None:
        params = draw_crop_params(n, generator=generator)
    if params.shape != (n, CROP_PARAMS):
        raise ValueError(f"params must have shape ({n}, {CROP_PARAMS}) but got {tuple(params.shape)}")
    rand = params.to(device=device, dtype=torch.float32, non_blocking=True)
    area = scale[0] + (scale[1] - scale[0]) * rand[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * rand[:, 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # fraction of the width kept
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (rand[:, 2] * 2 - 1) * (1 - w)  # centre, in [-1, 1] coordinates, crop inside the image
    cy = (rand[:, 3] * 2 - 1) * (1 - h)
    sign = torch.where(rand[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones_like(w)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w * sign, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1).to(
        images.dtype
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> list[torch.Tensor]:
    """Index tensors of the batches of one epoch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 but got {batch_size}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    batches = list(order.split(batch_size))
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches
