"""Batches on the device: slicing a uint8 tensor, normalising, and augmenting whole batches at once.

Augmentation runs on the batch's device (the GPU when there is one) with one ``affine_grid`` +
``grid_sample`` call: a random resized crop (scale and aspect ratio as torchvision's
``RandomResizedCrop``) and a horizontal flip per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tlsearch.preprocessing import DataConfig


def normalize(images_uint8: torch.Tensor, config: DataConfig, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NCHW uint8 → NCHW float normalised with the backbone's mean and std."""
    mean = torch.tensor(config.mean, device=images_uint8.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=images_uint8.device, dtype=dtype).view(1, 3, 1, 1)
    return (images_uint8.to(dtype) / 255.0 - mean) / std


def random_resized_crop_flip(
    images: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """Per-image random resized crop (same output size) and horizontal flip, for a float NCHW batch."""
    n = images.shape[0]
    device = images.device
    rand = torch.rand(n, 4, generator=generator, device=generator.device if generator else None).to(device)
    area = scale[0] + (scale[1] - scale[0]) * rand[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * rand[:, 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # fraction of the width kept
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (rand[:, 2] * 2 - 1) * (1 - w)  # centre, in [-1, 1] coordinates, crop inside the image
    cy = (rand[:, 3] * 2 - 1) * (1 - h)
    sign = torch.ones(n, device=device)
    if flip:
        coin = torch.rand(n, generator=generator, device=generator.device if generator else None).to(device)
        sign = torch.where(coin < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device, dtype=images.dtype)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def batch_indices(n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                  drop_last: bool = False) -> list[torch.Tensor]:
    """Index tensors of the batches of one epoch."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    batches = list(order.split(batch_size))
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches
