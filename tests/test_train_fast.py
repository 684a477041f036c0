"""Fast trials on the CPU: the feature cache gives the same features and metrics as the uncached
path and is shared across trials; resident and streaming data train identically; the speed
decisions (compile, channels_last, precision) follow their documented rules."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tlsearch_builtins.freezing._static import FullFinetune, LinearProbe
from tlsearch_builtins.regularizers._mixing import Mixup
from torch import nn

from tests.conftest import decode_shapes
from tlsearch.data import DecodedImages
from tlsearch.errors import ConfigError
from tlsearch.testing._tiny import TinyBackbone, tiny_transfer_model
from tlsearch.train import (
    FeatureCache,
    NonFiniteError,
    Trainer,
    TrainSettings,
    decide_compile,
    feature_key,
    is_convolutional,
    resolve_precision,
    use_channels_last,
)
from tlsearch.train.compiling import DEFAULT, MARGIN, REFERENCE
from tlsearch.train.timing import DataTimer

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def data(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[DecodedImages, DecodedImages]:
    return decode_shapes(shapes_dir, tmp_path_factory.mktemp("images"))


def _fit(
    data, *, strategy=None, cache_dir=None, identity=None, seed=0, backbone=None, regularizers=(), **settings
):
    train, val = data
    model = tiny_transfer_model(backbone, num_outputs=4, seed=seed)
    trainer = Trainer(
        model,
        strategy=strategy or LinearProbe(),
        regularizers=regularizers,
        num_outputs=4,
        settings=TrainSettings(**{"epochs": 2, "batch_size": 8, "lr": 1e-2, **settings}),
        feature_cache_dir=cache_dir,
        backbone_identity=identity,
        profile=True,
    )
    return trainer, trainer.fit(train, val)


def test_cached_features_equal_the_backbone_run_on_the_images(data, tmp_path):
    trainer, result = _fit(data, cache_dir=tmp_path)
    assert result.used_feature_cache and result.extras["feature_cache"]["hit"] is False
    stored = FeatureCache(tmp_path).load(result.extras["feature_cache"]["key"])
    assert stored is not None
    train, val = data
    images = torch.from_numpy(np.array(train.images)).permute(0, 3, 1, 2)
    torch.testing.assert_close(
        torch.from_numpy(np.array(stored[0])), trainer.features(images), rtol=1e-5, atol=1e-5
    )
    assert stored[0].shape == (len(train), 32) and stored[1].shape == (len(val), 32)


def test_cached_trial_has_the_metrics_of_the_uncached_trial(data, tmp_path):
    # the epoch loop on both (a solved probe is tested in test_probe_solver.py)
    _, cached = _fit(data, cache_dir=tmp_path, solve_probe=False)
    _, plain = _fit(data, feature_cache=False, solve_probe=False)
    assert cached.used_feature_cache and not plain.used_feature_cache
    for a, b in zip(cached.history, plain.history, strict=True):
        assert a["accuracy"] == b["accuracy"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_a_second_trial_reuses_the_features_and_matches(data, tmp_path):
    _, first = _fit(data, cache_dir=tmp_path, identity={"plugin": "tiny_cnn", "params": {"width": 8}})
    _, second = _fit(data, cache_dir=tmp_path, identity={"plugin": "tiny_cnn", "params": {"width": 8}})
    assert first.extras["feature_cache"]["hit"] is False and second.extras["feature_cache"]["hit"] is True
    assert first.extras["feature_cache"]["key"] == second.extras["feature_cache"]["key"]
    assert first.metrics == pytest.approx({**second.metrics, "epoch_seconds": first.metrics["epoch_seconds"]})
    assert len(list(tmp_path.glob("features-*.json"))) == 1


def test_the_key_covers_hyperparameters_weights_data_and_precision(data):
    train, val = data
    model = tiny_transfer_model(num_outputs=4, seed=0)
    base = {
        "backbone": model.backbone,
        "identity": {"plugin": "timm", "params": {"model": "a", "global_pool": "avg"}},
        "data_config": model.data_config,
        "train": train,
        "val": val,
        "precision": "fp32",
    }
    key = feature_key(**base)
    assert feature_key(**base) == key
    assert (
        feature_key(
            **{**base, "identity": {"plugin": "timm", "params": {"model": "a", "global_pool": "max"}}}
        )
        != key
    )
    assert feature_key(**{**base, "precision": "bf16"}) != key
    assert feature_key(**{**base, "backbone": tiny_transfer_model(num_outputs=4, seed=1).backbone}) != key
    assert feature_key(**{**base, "train": val, "val": train}) != key
    assert feature_key(**{**base, "data_config": model.data_config.with_size(48)}) != key
    other = tiny_transfer_model(num_outputs=4, seed=0)
    other.backbone.pool = nn.AdaptiveMaxPool2d(1)  # same weights, different structure
    assert feature_key(**{**base, "backbone": other.backbone}) != key
    # the same identity written in another order (a study's YAML, a resumed trial) is the same entry
    reordered = {"params": {"global_pool": "avg", "model": "a"}, "plugin": "timm"}
    assert feature_key(**{**base, "identity": reordered}) == key


def test_evaluating_cached_features_gives_the_heads_metrics_on_them(data):
    """Bug caught: ``evaluate(features=…)`` (how a trial on cached features is scored) returning nothing."""
    trainer, _ = _fit(data)
    _, val = data
    targets = torch.as_tensor(val.targets)
    features = torch.randn(
        len(targets), trainer.model.num_features, generator=torch.Generator().manual_seed(0)
    )
    metrics = trainer.evaluate(None, targets, features=features)
    with torch.no_grad():
        expected = (trainer.model.head(features).argmax(dim=1) == targets).float().mean()
    assert metrics["accuracy"] == pytest.approx(float(expected))


def test_random_augmentation_or_input_regularizers_disable_the_cache(data, tmp_path):
    _, augmented = _fit(data, cache_dir=tmp_path, augment_frozen=True, epochs=1)
    _, mixed = _fit(data, cache_dir=tmp_path, regularizers=[Mixup()], epochs=1)
    _, finetuned = _fit(data, cache_dir=tmp_path, strategy=FullFinetune(), epochs=1)
    assert (
        not augmented.used_feature_cache and not mixed.used_feature_cache and not finetuned.used_feature_cache
    )
    assert not list(tmp_path.glob("features-*"))


def test_streaming_and_resident_trials_train_identically(data):
    _, resident = _fit(data, strategy=FullFinetune(), data_placement="resident")
    _, streamed = _fit(data, strategy=FullFinetune(), data_placement="stream", loader_workers=0)
    assert resident.extras["data_placement"] == "resident" and streamed.extras["data_placement"] == "stream"
    for a, b in zip(resident.history, streamed.history, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]
    timing = streamed.extras["epochs"][0]
    assert timing["train_images"] == 48 and 0 < timing["data_seconds"] < timing["train_seconds"]


def test_non_finite_loss_stops_the_trial(data):
    with pytest.raises(NonFiniteError, match="non-finite"):
        _fit(data, strategy=FullFinetune(), lr=1e30, optimizer="sgd", epochs=1)


def test_compile_only_when_the_trial_repays_the_warm_up():
    def decide(images: int, name: str | None = None, mode: str = "auto", device=CUDA) -> bool:
        return decide_compile(mode=mode, device=device, expected_images=images, model_name=name).compile

    resnet = REFERENCE["resnet50"].break_even_images()
    assert 1.0e6 < resnet < 1.3e6  # 49 s / (1/3722 − 1/4423)
    assert not decide(int(MARGIN * resnet) - 1, "resnet50") and decide(int(MARGIN * resnet) + 1, "resnet50")
    assert not decide(10**9, "efficientnet_lite0")  # compiled is slower: never
    assert REFERENCE["convnext_tiny"].break_even_images() < resnet
    assert not decide(20 * 1000 * 3)  # a typical search trial: 20 epochs × 1000 images × 3
    assert decide(int(MARGIN * DEFAULT.break_even_images()) + 1)
    assert (
        not decide(10**9, device=CPU)
        and decide(10, mode="always", device=CPU)
        and not decide(10**9, mode="never")
    )
    with pytest.raises(ValueError, match="valid choices: auto, always, never"):
        decide(1, mode="sometimes")


def test_channels_last_for_convolutional_networks_on_cuda_only():
    cnn = TinyBackbone().build().module
    vit_like = nn.Sequential(nn.Conv2d(3, 8, 16, 16), nn.Flatten(2), nn.Linear(4, 4))
    assert is_convolutional(cnn) is True and is_convolutional(vit_like) is False  # a bool, not None
    assert is_convolutional(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)))  # two: a small CNN
    assert (
        use_channels_last(cnn, CUDA)
        and not use_channels_last(vit_like, CUDA)
        and not use_channels_last(cnn, CPU)
    )


def test_precision_selection(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", CUDA).dtype is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    fp16 = resolve_precision("auto", CUDA)
    assert fp16.name == "fp16" and fp16.dtype is torch.float16
    assert resolve_precision("auto", CPU).dtype is None
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16", CPU)


def test_the_data_timer_sums_the_spans_it_brackets_and_measures_nothing_when_disabled():
    """Bugs caught: the time outside ``start``/``stop`` counted, spans overwritten instead of summed,
    or a disabled timer (``profile`` off) still reading the clock."""
    timer = DataTimer(CPU, enabled=True)
    for _ in range(2):
        timer.start()
        time.sleep(0.02)
        timer.stop()
        time.sleep(0.05)  # the step itself: not data time
    assert 0.04 <= timer.total() < 0.09
    off = DataTimer(CPU, enabled=False)
    off.start()
    time.sleep(0.01)
    off.stop()
    assert off.total() == 0.0


def test_a_cache_entry_whose_train_or_val_shape_disagrees_with_its_record_reads_as_missing(tmp_path):
    """Bug caught: an entry accepted when only one of its two arrays matches the shapes it recorded
    (a val or train file from another run, or cut short)."""
    import json

    import numpy as np

    cache = FeatureCache(tmp_path / "not" / "made" / "yet")  # save makes its folder, parents too
    cache.save("k", np.zeros((4, 3), np.float32), np.zeros((2, 3), np.float32))
    assert cache.load("k") is not None
    meta_path = next((tmp_path / "not" / "made" / "yet").glob("*.json"))
    record = json.loads(meta_path.read_text())
    for field, wrong in (("train_shape", [5, 3]), ("val_shape", [3, 3])):
        meta_path.write_text(json.dumps({**record, field: wrong}))
        assert cache.load("k") is None, field


def test_the_weights_fingerprint_covers_parameter_names_not_only_their_values():
    """Bug caught: two backbones with equal numbers under different parameter names (another
    architecture) sharing cached features."""
    from tlsearch.train.features import weights_fingerprint

    layer = nn.Linear(2, 2)
    assert weights_fingerprint(nn.ModuleDict({"a": layer})) != weights_fingerprint(
        nn.ModuleDict({"b": layer})
    )
