"""The zero-cost ranking scores each backbone at the study's size, also when the size is searched.

Rule (``tlsearch.rank.ranking.ranking_size``): the largest size listed for the backbone (its own
``image_size`` list, else the study's ``data.image_size``); its native size only when none is set.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from tlsearch.cli import main
from tlsearch.config import load_config, resolve_space
from tlsearch.rank import candidates
from tlsearch.rank.ranking import ranking_size
from tlsearch.registry import get_plugin_manager

TWO_MODELS = {"timm": {"model": ["test_efficientnet", "test_resnet"], "weights": "random"}}


def _sizes(write_study, data, backbone):
    config = load_config(write_study(data=data, space={"backbone": backbone}))
    space = resolve_space(config, get_plugin_manager().registry)
    return {c.label: ranking_size(space, c, config.data.fixed_image_size) for c in candidates(space)}


def test_a_listed_study_size_ranks_at_its_largest(write_study) -> None:
    """Bug caught (issue 14): a list ``image_size`` ranking each backbone at its native 224 px."""
    sizes = _sizes(write_study, {"image_size": [24, 40, 32]}, TWO_MODELS)
    assert set(sizes.values()) == {40}


def test_a_fixed_size_a_backbones_own_list_and_no_size(write_study) -> None:
    """Bugs caught: a backbone's own list ignored for the study's; the study's fixed size ignored."""
    assert set(_sizes(write_study, {"image_size": 24}, TWO_MODELS).values()) == {24}
    own = {"timm": {**TWO_MODELS["timm"], "image_size": [28, 36]}}
    assert set(_sizes(write_study, {"image_size": [24, 40]}, own).values()) == {36}
    assert set(_sizes(write_study, {"image_size": None}, TWO_MODELS).values()) == {None}  # native


def test_cli_rank_scores_a_listed_size_study_at_the_largest_size(write_study, tmp_path) -> None:
    """Bug caught: ``tlsearch rank`` (not only the study's ranking) passing no size for a list."""
    path = write_study(data={"image_size": [24, 40]}, space={"backbone": TWO_MODELS})
    result = CliRunner().invoke(main, ["rank", str(path), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["input_size"] for r in rows] == [40, 40]


def test_a_study_that_sets_no_size_ranks_at_the_size_its_trials_train_at(write_study) -> None:
    """Bug caught: LogME scored 8-px digits upsampled to the native 224 px while every trial
    trained at the data-derived 64 px (tlsearch.data.sizes)."""
    import dataclasses

    config = load_config(write_study(data={"image_size": None}, space={"backbone": TWO_MODELS}))
    space = resolve_space(config, get_plugin_manager().registry)
    small = dataclasses.replace(space, data_short_side=8)
    assert {ranking_size(small, c) for c in candidates(small)} == {64}  # both native 160 px
    large = dataclasses.replace(space, data_short_side=300)
    assert {ranking_size(large, c) for c in candidates(large)} == {None}  # native
