"""The built-in backbones: timm and torchvision families, the curated list, weights from files."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file
from tlsearch_builtins.backbones import (
    CURATED,
    TimmBackbone,
    TorchvisionBackbone,
    expand_model_patterns,
    module_layer_groups,
)
from torch import nn

from tlsearch.errors import PluginError
from tlsearch.kinds import TransferModel, multiples_of
from tlsearch.registry import get_plugin_manager
from tlsearch.testing import BackboneContract


class TestTimmResNet(BackboneContract):
    plugin = TimmBackbone
    params = {"model": "test_resnet", "weights": "random"}


class TestTimmViT(BackboneContract):
    plugin = TimmBackbone
    params = {"model": "test_vit", "weights": "random"}


class TestTimmEfficientNetWithDropPath(BackboneContract):
    plugin = TimmBackbone
    params = {"model": "test_efficientnet", "weights": "random"}
    build_options = {"drop_path_rate": 0.1}


class TestTimmConvNeXt(BackboneContract):
    plugin = TimmBackbone
    params = {"model": "test_convnext", "weights": "random"}


class TestTorchvisionMobileNet(BackboneContract):
    plugin = TorchvisionBackbone
    params = {"model": "mobilenet_v3_small", "weights": "random"}


class TestTorchvisionResNet(BackboneContract):
    plugin = TorchvisionBackbone
    params = {"model": "resnet18", "weights": "random"}


class TestCuratedEfficientNetLite0(BackboneContract):
    plugin = next(c for c in CURATED if c.name == "efficientnet_lite0")
    params = {"weights": "random"}


# --- the curated list -----------------------------------------------------------------------------

TIER_LIMITS = {"small": (0.0, 0.5), "medium": (0.5, 2.0), "large": (2.0, 1e9)}  # GMACs at 224 px


@pytest.mark.parametrize("cls", CURATED, ids=lambda c: c.name)
def test_curated_backbone_cost_is_measured_and_matches_its_tier(cls) -> None:
    facts = cls().describe()
    assert facts["model"] == cls.name and facts["input_size"] == 224
    low, high = TIER_LIMITS[cls.tier]
    assert low <= facts["gmacs"] < high, (cls.name, facts)
    assert facts["gflops"] == pytest.approx(2 * facts["gmacs"], rel=1e-3)


def test_curated_costs_agree_with_published_figures() -> None:
    """Measured on the meta device; timm's published numbers: resnet50 4.1 GMACs/25.6M params (23.5M
    without the classifier), mobilenetv3_large_100 0.22 GMACs."""
    by_name = {c.name: c().describe() for c in CURATED}
    assert by_name["resnet50"]["gmacs"] == pytest.approx(4.1, abs=0.05)
    assert by_name["resnet50"]["params"] == pytest.approx(23.5e6, rel=0.01)
    assert by_name["mobilenetv3_large_100"]["gmacs"] == pytest.approx(0.22, abs=0.01)


@pytest.mark.parametrize("cls", CURATED, ids=lambda c: c.name)
def test_curated_backbone_builds_with_ordered_groups_on_the_meta_device(cls) -> None:
    with torch.device("meta"):
        built = cls(weights="random").build()
        size = built.data_config.input_size
        features = built.module.eval()(torch.empty(2, 3, size, size))
    assert tuple(features.shape) == (2, built.num_features)  # e.g. MobileNetV3's conv head widens it
    TransferModel(built, nn.Linear(built.num_features, 2))  # groups cover every parameter once
    assert len(built.layer_groups) >= 4
    assert built.info["tier"] == cls.tier and built.info["gflops"] > 0
    assert cls.summary().startswith(cls.name) and "Source:" in cls.summary()


# --- timm wildcards -------------------------------------------------------------------------------


def test_wildcards_expand_against_timm_list_models() -> None:
    names = expand_model_patterns("efficientnet_lite*")
    assert "efficientnet_lite0" in names and all(n.startswith("efficientnet_lite") for n in names)
    assert expand_model_patterns(["resnet18", "test_vi?"], pretrained_only=False)[:2] == [
        "resnet18",
        "test_vit",
    ]
    assert (
        TimmBackbone.expand_overrides({"model": "test_resne?", "weights": "random"})["model"] == "test_resnet"
    )
    with pytest.raises(PluginError, match="matches no model"):
        expand_model_patterns("no_such_net*")


def test_an_unexpanded_pattern_or_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(PluginError, match="pattern"):
        TimmBackbone(model="resnet*", weights="random").build()
    with pytest.raises(PluginError, match="unknown timm model 'resnet19'"):
        TimmBackbone(model="resnet19", weights="random").build()
    with pytest.raises(PluginError, match="unknown torchvision model 'resnet19'"):
        TorchvisionBackbone(model="resnet19", weights="random").build()


# --- weights --------------------------------------------------------------------------------------


def test_offline_hub_is_a_clear_error_never_random_weights(monkeypatch) -> None:
    import timm
    import torchvision.models

    def offline(*args, **kwargs):
        if kwargs.get("pretrained") or kwargs.get("weights") is not None:
            raise OSError("Network is unreachable")
        raise AssertionError("must not fall back to random weights")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PluginError, match=r"weights: /path/to/weights\.safetensors"):
        TimmBackbone(model="resnet18").build()
    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(PluginError, match=r"weights: /path/to/weights\.pth"):
        TorchvisionBackbone(model="resnet18").build()


def test_missing_weights_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(PluginError, match="does not exist"):
        TimmBackbone(model="test_resnet", weights=str(tmp_path / "nope.safetensors")).build()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_load_from_a_local_file(tmp_path, suffix) -> None:
    import timm

    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    built = TimmBackbone(model="test_resnet", weights=str(path)).build()
    loaded = built.module.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_weights_with_other_names_load_by_order(tmp_path) -> None:
    import timm

    source = timm.create_model("test_resnet", pretrained=False)
    renamed = OrderedDict((f"net.t{i}", v) for i, v in enumerate(source.state_dict().values()))
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(PluginError, match="weights_key_map: order"):
        TimmBackbone(model="test_resnet", weights=str(tmp_path / "renamed.pth")).build()
    built = TimmBackbone(
        model="test_resnet", weights=str(tmp_path / "renamed.pth"), weights_key_map="order"
    ).build()
    assert torch.equal(built.module.conv1[0].weight, source.conv1[0].weight)


def test_torchvision_weights_from_a_file_with_or_without_the_classifier(tmp_path) -> None:
    import torchvision

    full = torchvision.models.get_model("mobilenet_v3_small", weights=None)
    torch.save(full.state_dict(), tmp_path / "full.pth")
    built = TorchvisionBackbone(model="mobilenet_v3_small", weights=str(tmp_path / "full.pth")).build()
    assert torch.equal(built.module.features[0][0].weight, full.features[0][0].weight)
    assert built.num_features == 1024
    headless = {k: v for k, v in full.state_dict().items() if not k.startswith("classifier.3")}
    torch.save(headless, tmp_path / "headless.pth")
    built = TorchvisionBackbone(model="mobilenet_v3_small", weights=str(tmp_path / "headless.pth")).build()
    assert torch.equal(built.module.classifier[0].weight, full.classifier[0].weight)


# --- options and groups ---------------------------------------------------------------------------


def test_drop_path_is_applied_where_supported_and_reported_where_not() -> None:
    built = TimmBackbone(model="test_efficientnet", weights="random").build(drop_path_rate=0.2)
    assert built.info["drop_path_rate"] == 0.2
    assert any(type(m).__name__ == "DropPath" for m in built.module.modules())
    tv = TorchvisionBackbone(model="mobilenet_v3_small", weights="random").build(drop_path_rate=0.2)
    assert tv.info["drop_path_rate"] == "unsupported"


@pytest.mark.parametrize(
    ("model", "first_groups"),
    [
        ("resnet18", ["conv1.weight", "layer1.0.conv1.weight", "layer2.0.conv1.weight"]),
        ("vit_b_16", ["class_token", "encoder.layers.encoder_layer_0.ln_1.weight"]),
        ("efficientnet_b0", ["features.0.0.weight", "features.1.0.block.0.0.weight"]),
    ],
)
def test_torchvision_layer_groups_follow_the_architecture(model, first_groups) -> None:
    import torchvision

    with torch.device("meta"):
        net = torchvision.models.get_model(model, weights=None)
    groups = module_layer_groups(net)
    assert [g[0] for g in groups[: len(first_groups)]] == first_groups


def test_torchvision_data_config_comes_from_the_weights_transform() -> None:
    built = TorchvisionBackbone(model="mobilenet_v3_small", weights="random").build()
    assert (built.data_config.input_size, built.data_config.crop_pct) == (224, 0.875)
    assert built.data_config.mean == pytest.approx((0.485, 0.456, 0.406))


def test_every_builtin_backbone_is_registered_with_its_hyperparameters() -> None:
    registered = get_plugin_manager().registry.plugins["backbone"]
    expected = {"timm", "torchvision", *(c.name for c in CURATED)}
    assert expected <= set(registered)
    assert len(CURATED) >= 8
    for name in expected:
        info = registered[name]
        assert set(info.to_dict()["hyperparameters"]) == set(info.cls.hyperparameters)
        assert info.cls.summary()


def test_a_vit_takes_the_study_image_size() -> None:
    """A ViT is built for one input size; the study's image_size reaches it as a build option."""
    cls = get_plugin_manager().registry.get("backbone", "vit_small_patch16_224").cls
    built = cls(weights="random").build(input_size=64)
    assert built.module(torch.randn(1, 3, 64, 64)).shape == (1, built.num_features)


def test_load_weights_false_never_fetches_weights(monkeypatch) -> None:
    """Rebuilding a trial to load its checkpoint must not reach the hub (offline export)."""
    import timm

    def no_hub(*args, pretrained=False, **kwargs):
        assert not pretrained, "tried to download pretrained weights"
        return real(*args, pretrained=pretrained, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", no_hub)
    registry = get_plugin_manager().registry
    for name, params in [("timm", {"model": "test_resnet"}), ("resnet18", {})]:
        built = registry.get("backbone", name).cls(**params).build(load_weights=False)  # weights default: hub
        assert built.num_features > 0


def test_a_torchvision_vit_takes_the_study_image_size_keeping_its_weights(tmp_path) -> None:
    """torchvision's ViTs refuse other input sizes: the module is rebuilt for the study's size, its
    position embedding interpolated and every other weight the file's."""
    import torchvision

    reference = torchvision.models.vit_b_16(weights=None)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "vit.safetensors")
    built = TorchvisionBackbone(model="vit_b_16", weights=str(tmp_path / "vit.safetensors")).build(
        input_size=64
    )
    assert built.module(torch.randn(2, 3, 64, 64)).shape == (2, built.num_features) == (2, 768)
    assert built.info["input_size"] == 64
    state = built.module.state_dict()
    assert state["encoder.pos_embedding"].shape == (1, 1 + (64 // 16) ** 2, 768)
    torch.testing.assert_close(state["conv_proj.weight"], reference.state_dict()["conv_proj.weight"])
    torch.testing.assert_close(state["class_token"], reference.state_dict()["class_token"])
    # the class token's position is kept; the patch positions are resampled from the 14 × 14 grid
    torch.testing.assert_close(
        state["encoder.pos_embedding"][:, :1], reference.state_dict()["encoder.pos_embedding"][:, :1]
    )
    with pytest.raises(PluginError, match="image_size 70 is not a multiple of this ViT's patch size 16"):
        TorchvisionBackbone(model="vit_b_16", weights="random").build(input_size=70)


@pytest.mark.parametrize(
    ("plugin", "params", "patch"),
    [
        (TimmBackbone, {"model": "vit_small_patch14_dinov2"}, 14),
        (TimmBackbone, {"model": "test_vit"}, 16),
        (TimmBackbone, {"model": "test_efficientnet"}, None),
        (TorchvisionBackbone, {"model": "vit_b_32"}, 32),
        (TorchvisionBackbone, {"model": "resnet18"}, None),
        (next(c for c in CURATED if c.name == "vit_small_patch16_224"), {}, 16),
        (next(c for c in CURATED if c.name == "efficientnet_lite0"), {}, None),
    ],
)
def test_a_vit_declares_the_multiples_of_its_patch_size(plugin, params, patch) -> None:
    """What the study's image_size is checked against and the derived default is rounded to
    (built on the meta device: no weights)."""
    sizes = plugin(**params, weights="random").input_sizes()
    assert sizes == (None if patch is None else multiples_of(patch))
