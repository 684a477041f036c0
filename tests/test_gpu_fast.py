"""On a CUDA device: resident batches equal the CPU path, a bf16/channels_last trial runs without
host synchronisation per step, fp16 trains with a grad scaler, streaming and the feature cache
agree with their alternatives, a compiled trial ends eager. Skipped where there is no CUDA
(benchmarks/gpu/check.sh runs them on a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tlsearch_builtins.freezing._static import FullFinetune, LinearProbe

from tests.conftest import decode_shapes
from tlsearch.data import ResidentBatches, StreamingBatches, batch_indices
from tlsearch.data.augment import Normalizer, draw_crop_params, random_resized_crop_flip
from tlsearch.preprocessing import DataConfig
from tlsearch.testing._tiny import tiny_transfer_model
from tlsearch.train import Trainer, TrainSettings

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def data(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return decode_shapes(shapes_dir, tmp_path_factory.mktemp("images"))


def test_resident_and_streamed_gpu_batches_equal_the_cpu_batches(data):
    train, _ = data
    batches = batch_indices(len(train), 5, shuffle=True, generator=torch.Generator().manual_seed(0))
    cpu = [x for x, _ in ResidentBatches(train, torch.device("cpu")).iterate(batches)]
    for source in (
        ResidentBatches(train, torch.device("cuda")),
        StreamingBatches(train, torch.device("cuda"), workers=1),
    ):
        gpu = [x for x, _ in source.iterate(batches)]
        assert all(g.is_cuda and torch.equal(g.cpu(), c) for g, c in zip(gpu, cpu, strict=True))


def test_gpu_augmentation_matches_cpu():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    params = draw_crop_params(6, generator=torch.Generator().manual_seed(0))
    config = DataConfig(input_size=32)
    cpu = random_resized_crop_flip(Normalizer(config, device="cpu")(x), params=params)
    gpu = random_resized_crop_flip(Normalizer(config, device="cuda")(x.cuda()), params=params.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("strategy", [FullFinetune, LinearProbe])
def test_a_trial_runs_on_cuda_with_mixed_precision(data, strategy, tmp_path):
    model = tiny_transfer_model(num_outputs=4)
    trainer = Trainer(
        model,
        strategy=strategy(),
        num_outputs=4,
        device="cuda",
        profile=True,
        settings=TrainSettings(epochs=2, batch_size=8),
        feature_cache_dir=tmp_path,
    )
    result = trainer.fit(*data)
    assert result.precision in {"bf16", "fp16"}
    assert np.isfinite(result.metrics["val_loss"])
    assert result.extras["channels_last"] is True
    assert result.used_feature_cache == (strategy is LinearProbe)
    if strategy is FullFinetune:
        assert result.extras["data_placement"] == "resident"
        assert 0 < result.extras["epochs"][-1]["data_seconds"] < result.extras["epochs"][-1]["train_seconds"]


def _cuda_fit(data, tmp_path, *, strategy=None, seed=0, **settings):
    trainer = Trainer(
        tiny_transfer_model(num_outputs=4, seed=seed),
        strategy=strategy or FullFinetune(),
        num_outputs=4,
        device="cuda",
        profile=True,
        settings=TrainSettings(**{"epochs": 2, "batch_size": 8, **settings}),
        feature_cache_dir=tmp_path,
    )
    return trainer, trainer.fit(*data)


def test_fp16_trains_with_a_grad_scaler(data, tmp_path):
    trainer, result = _cuda_fit(data, tmp_path, precision="fp16")
    assert result.precision == "fp16" and trainer.precision.grad_scaler() is not None
    assert np.isfinite(result.metrics["val_loss"]) and np.isfinite(result.metrics["train_loss"])


def test_streamed_trial_on_cuda_reaches_the_resident_trials_metrics(data, tmp_path):
    """Same batches whether resident or streamed through pinned memory: the same trial, up to the
    nondeterminism of cuDNN's kernels."""
    _, resident = _cuda_fit(data, tmp_path, precision="fp32", data_placement="resident")
    _, streamed = _cuda_fit(data, tmp_path, precision="fp32", data_placement="stream", loader_workers=2)
    assert streamed.extras["data_placement"] == "stream"
    assert streamed.metrics["val_loss"] == pytest.approx(resident.metrics["val_loss"], rel=1e-3, abs=1e-3)


def test_a_compiled_trial_trains_and_leaves_an_eager_model(data, tmp_path):
    trainer, result = _cuda_fit(data, tmp_path, compile="always", epochs=1)
    assert result.extras["compile"] is True and np.isfinite(result.metrics["val_loss"])
    backbone = trainer.model.backbone
    assert getattr(backbone, "_compiled_call_impl", None) is None  # export and checkpoints see eager code
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, device="cuda")
    with torch.inference_mode():
        assert torch.isfinite(trainer.model(trainer._inputs(x, train=False))).all()


def test_cached_features_on_cuda_equal_the_uncached_ones(data, tmp_path):
    train, _ = data
    images = torch.from_numpy(np.ascontiguousarray(train.images)).permute(0, 3, 1, 2).cuda()
    _, cached = _cuda_fit(data, tmp_path, strategy=LinearProbe())
    trainer, uncached = _cuda_fit(data, tmp_path / "none", strategy=LinearProbe(), feature_cache=False)
    assert cached.used_feature_cache and not uncached.used_feature_cache
    assert cached.metrics["accuracy"] == pytest.approx(uncached.metrics["accuracy"], abs=1 / 16)
    assert cached.metrics["val_loss"] == pytest.approx(uncached.metrics["val_loss"], rel=0.05)
    features = trainer.features(images)
    assert features.is_cuda and features.shape == (len(train), trainer.model.num_features)
