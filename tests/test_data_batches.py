"""Batches on the device: resident and streaming placements hold the same images; GPU-style augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tlsearch.data import (
    DecodedImages,
    Normalizer,
    ResidentBatches,
    StreamingBatches,
    batch_indices,
    decode_images,
    draw_crop_params,
    normalize,
    plan_placement,
    random_resized_crop_flip,
    scan_folder,
)
from tlsearch.preprocessing import DataConfig

GIB = 2**30
CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def decoded(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DecodedImages:
    cache = tmp_path_factory.mktemp("cache")
    images = scan_folder(shapes_dir / "train")
    decode_images(images, DataConfig(input_size=32), cache_dir=cache, progress=False)
    return decode_images(images, DataConfig(input_size=32), cache_dir=cache, progress=False)  # memory-mapped


def _epoch(source, n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = batch_indices(n, 7, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return [(x.clone(), y.clone()) for x, y in source.iterate(batches)]


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_batches_hold_the_same_images_as_resident(decoded, workers):
    resident = _epoch(ResidentBatches(decoded, CPU), len(decoded), seed=3)
    streamed = _epoch(StreamingBatches(decoded, CPU, workers=workers), len(decoded), seed=3)
    assert len(resident) == len(streamed) == -(-len(decoded) // 7)
    order = torch.cat(
        batch_indices(len(decoded), 7, shuffle=True, generator=torch.Generator().manual_seed(3))
    )
    expected = torch.from_numpy(np.asarray(decoded.images))[order].permute(0, 3, 1, 2)
    got = torch.cat([x for x, _ in streamed])
    assert got.dtype == torch.uint8 and got.shape == expected.shape
    assert torch.equal(got, expected)
    for (xr, yr), (xs, ys) in zip(resident, streamed, strict=True):
        assert torch.equal(xr, xs) and torch.equal(yr, ys)
    assert torch.equal(torch.cat([y for _, y in streamed]), torch.from_numpy(decoded.targets)[order])


def test_in_memory_images_stream_without_a_cache_file(decoded):
    in_memory = DecodedImages(np.array(decoded.images), decoded.targets, decoded.source)
    assert in_memory.path is None
    a = _epoch(StreamingBatches(in_memory, CPU, workers=0), len(decoded), seed=1)
    b = _epoch(ResidentBatches(decoded, CPU), len(decoded), seed=1)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))


def test_placement_follows_the_memory_budget():
    assert plan_placement(7 * GIB, device=CUDA, free_bytes=70 * GIB).where == "resident"
    far = plan_placement(7 * GIB, device=CUDA, free_bytes=10 * GIB)
    assert far.where == "stream" and "exceed" in far.reason
    assert plan_placement(7 * GIB, device=CUDA, free_bytes=10 * GIB, budget_fraction=0.8).where == "resident"
    assert plan_placement(500 * GIB, device=CPU).where == "resident"
    assert plan_placement(1, device=CUDA, mode="stream", free_bytes=80 * GIB).where == "stream"
    with pytest.raises(ValueError, match="valid choices: auto, resident, stream"):
        plan_placement(1, device=CPU, mode="gpu")


def test_normalizer_matches_the_formula():
    config = DataConfig(input_size=8, mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = (x.float() / 255 - torch.tensor(config.mean).view(1, 3, 1, 1)) / torch.tensor(config.std).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(Normalizer(config, device=CPU)(x), expected)
    torch.testing.assert_close(normalize(x, config), expected)


def test_crop_params_identity_and_flip():
    x = torch.randn(2, 3, 16, 16)
    full_no_flip = torch.tensor([[1.0, 0.5, 0.5, 0.5, 0.9]] * 2)
    torch.testing.assert_close(random_resized_crop_flip(x, params=full_no_flip), x, atol=1e-5, rtol=1e-5)
    flipped = full_no_flip.clone()
    flipped[:, 4] = 0.1
    torch.testing.assert_close(random_resized_crop_flip(x, params=flipped), x.flip(-1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        random_resized_crop_flip(x, params=torch.zeros(3, 5))


def test_drawn_crops_are_deterministic_and_crop():
    x = torch.randn(4, 3, 16, 16)
    a = random_resized_crop_flip(x, params=draw_crop_params(4, generator=torch.Generator().manual_seed(0)))
    b = random_resized_crop_flip(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert a.shape == x.shape and not torch.allclose(a, x)
