"""``weights: hub`` without network: one message before the first trial (exit 2), not each trial's
retries. No test reaches the network: the probe is replaced, or aims at an unroutable address."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from tlsearch_builtins import hub
from tlsearch_builtins.hub import check_hub_weights, hub_reachable, timm_hub_sources, url_hub_sources

from tlsearch.cli import main
from tlsearch.errors import PluginError
from tlsearch.search import run_study

HUB_SPACE = {"backbone": {"timm": {"model": "test_efficientnet", "weights": "hub"}}}


@pytest.fixture
def offline(monkeypatch):
    """No hub answers and nothing is cached; records the hosts probed."""
    probed: list[str] = []

    def probe(host: str, **kw) -> bool:
        probed.append(host)
        return False

    monkeypatch.setattr(hub, "hub_reachable", probe)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    return probed


def test_an_offline_hub_stops_the_study_before_any_work(write_study, tmp_path, offline):
    study = write_study(space=HUB_SPACE)
    with pytest.raises(PluginError, match="test_efficientnet.*huggingface.co cannot be reached") as exc:
        run_study(study, out_dir=tmp_path / "out", progress=False)
    assert "space.backbone.timm" in str(exc.value) and "weights: random" in str(exc.value)
    assert offline == ["huggingface.co"]  # probed once, not per trial
    assert not (tmp_path / "out" / "study.journal").exists()  # no trial, no study


def test_the_cli_exits_2_with_the_one_message(write_study, tmp_path, offline):
    study = write_study(space=HUB_SPACE)
    result = CliRunner().invoke(
        main, ["run", str(study), "--out", str(tmp_path / "out"), "--console", "plain"]
    )
    assert result.exit_code == 2, result.output
    assert "cannot be reached (checked once, before any trial)" in result.output
    assert "trial 0" not in result.output


def test_cached_weights_need_no_network():
    def never(host: str) -> bool:
        raise AssertionError("probed although cached")

    check_hub_weights({"resnet18": ("huggingface.co", True)}, probe=never)
    with pytest.raises(PluginError, match="'a', 'b'"):
        check_hub_weights({"a": ("h", False), "b": ("h", False)}, probe=lambda host: False)


def test_the_probe_gives_up_fast_on_an_unroutable_host_and_honours_hf_offline(monkeypatch):
    assert hub_reachable("10.255.255.1", timeout=0.2) is False  # a non-routable address: no answer
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable("huggingface.co", timeout=0.01) is False


def test_cache_lookup_for_timm_and_torch_hub(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, f: f"/cache/{repo}/{f}")
    assert timm_hub_sources(["test_efficientnet"]) == {"test_efficientnet": ("huggingface.co", True)}
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path))
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert url_hub_sources({"resnet18": url}) == {"resnet18": ("download.pytorch.org", False)}
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"")
    assert url_hub_sources({"resnet18": url}) == {"resnet18": ("download.pytorch.org", True)}


def test_torchvision_and_curated_backbones_check_their_hub_weights(offline, monkeypatch, tmp_path):
    from tlsearch.registry import get_plugin_manager
    from tlsearch.space import Fixed

    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path))  # an empty torch hub cache
    registry = get_plugin_manager().registry
    torchvision = registry.get("backbone", "torchvision").cls
    space = {"model": Fixed("resnet18"), "weights": Fixed("hub"), "weights_tag": Fixed("DEFAULT")}
    with pytest.raises(PluginError, match="'resnet18:DEFAULT'.*download.pytorch.org cannot be reached"):
        torchvision.check_available(space)
    torchvision.check_available({**space, "weights": Fixed("random")})  # nothing to fetch
    curated = registry.get("backbone", "resnet18").cls
    with pytest.raises(PluginError, match="cannot be reached"):
        curated.check_available({"weights": Fixed("hub")})
