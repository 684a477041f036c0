"""small_cnn passes the backbone contract and honours ``weights:``: random, or a file checked
once before any trial, a relative path being from the study file's folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tlsearch_example_plugin.backbone import SmallCNN, SmallCNNBackbone, gflops

from tlsearch.errors import PluginError
from tlsearch.space import Categorical, Fixed
from tlsearch.testing import BackboneContract


class TestSmallCNN(BackboneContract):
    plugin = SmallCNNBackbone
    params = {"width": 8}


class TestSmallCNNAtAnotherSize(BackboneContract):
    plugin = SmallCNNBackbone
    params = {"width": 8}
    build_options = {"input_size": 48, "drop_path_rate": 0.1}
    image_size = 48


def _weights_file(folder: Path, *, width: int = 8, name: str = "small.safetensors") -> tuple[Path, dict]:
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in SmallCNN(width).state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / name))
    return folder / name, state


def _space(weights: object, width: object = 8) -> dict:
    return {"width": Fixed(width), "weights": Fixed(weights)}


def test_a_relative_weights_file_is_found_from_the_study_folder_and_loaded(tmp_path: Path) -> None:
    path, state = _weights_file(tmp_path / "weights")
    space = SmallCNNBackbone.check_space(_space("weights/small.safetensors"), study_dir=tmp_path)
    assert space["weights"] == Fixed(str(path.resolve()))
    built = SmallCNNBackbone(width=8, weights=space["weights"].value).build()
    for key, tensor in state.items():
        assert torch.equal(built.module.state_dict()[key], tensor), key
    assert built.info["weights"] == str(path.resolve())


def test_a_pth_file_loads_too_and_load_weights_false_skips_it(tmp_path: Path) -> None:
    torch.manual_seed(2)
    state = SmallCNN(8).state_dict()
    torch.save(state, tmp_path / "small.pth")
    weights = SmallCNNBackbone.check_space(_space("small.pth"), study_dir=tmp_path)["weights"].value
    loaded = SmallCNNBackbone(width=8, weights=weights).build().module.state_dict()
    assert torch.equal(loaded["stem.0.weight"], state["stem.0.weight"])
    torch.manual_seed(3)
    skipped = SmallCNNBackbone(width=8, weights=weights).build(load_weights=False).module.state_dict()
    assert not torch.equal(skipped["stem.0.weight"], state["stem.0.weight"])


def test_every_width_the_study_may_pick_is_checked(tmp_path: Path) -> None:
    _weights_file(tmp_path, width=8)
    space = {"width": Categorical((8, 16)), "weights": Fixed("small.safetensors")}
    with pytest.raises(PluginError, match=r"does not fit width 16.*stem\.0\.weight"):
        SmallCNNBackbone.check_space(space, study_dir=tmp_path)


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [
        ("hub", r"weights 'hub' is not valid; valid: random, or a \.safetensors"),
        ("missing.safetensors", r"does not exist \(looked for '.*missing\.safetensors'"),
    ],
)
def test_bad_weights_are_refused_with_the_valid_forms(tmp_path: Path, weights: str, fragment: str) -> None:
    with pytest.raises(PluginError, match=fragment):
        SmallCNNBackbone.check_space(_space(weights), study_dir=tmp_path)


def test_a_pickle_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    torch.save({"step": 3}, tmp_path / "bad.pth")
    with pytest.raises(PluginError, match="does not hold a state dict of tensors"):
        SmallCNNBackbone.check_space(_space("bad.pth"), study_dir=tmp_path)


def test_random_weights_need_no_file_and_the_cost_is_counted() -> None:
    space = SmallCNNBackbone.check_space(_space("random"), study_dir=None)
    assert space["weights"] == Fixed("random")
    built = SmallCNNBackbone(width=16).build(input_size=64)
    assert built.info["gflops"] == pytest.approx(4 * gflops(16, 32), rel=0.01)
    assert built.info["input_size"] == 64 and built.data_config.input_size == 32
    assert SmallCNNBackbone(width=16).describe()["params"] == built.info["params"]
    # first convolution at 32 px: 2 · 9 · 3 · 16 · 32 · 32 FLOPs
    assert gflops(16, 32) > 2 * 9 * 3 * 16 * 32 * 32 / 1e9
