"""Backbone ranking in studies: candidates, narrowing the space, the stored ranking, ``tlsearch rank``."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from tlsearch.cli import main
from tlsearch.config import load_config, resolve_space
from tlsearch.data import load_splits
from tlsearch.rank import RANK_ATTR, candidates, narrow_space, rank_backbones
from tlsearch.registry import get_plugin_manager
from tlsearch.search import StudyData, run_study
from tlsearch.space import Categorical

TWO_MODELS = {"backbone": {"timm": {"model": ["test_efficientnet", "test_resnet"], "weights": "random"}}}


def _space(write_study, **space):
    config = load_config(write_study(space=space))
    pm = get_plugin_manager()
    return config, pm, resolve_space(config, pm.registry)


def test_candidates_expand_categorical_hyperparameters_and_narrowing_keeps_the_chosen(write_study) -> None:
    _, _, space = _space(write_study, **TWO_MODELS)
    labels = [c.label for c in candidates(space)]
    assert labels == ["timm(test_efficientnet)", "timm(test_resnet)"]
    narrowed = narrow_space(space, ["timm(test_resnet)"])
    model = narrowed.backbone[0].space.params["model"]
    assert isinstance(model, Categorical) and model.choices == ("test_resnet",)
    with pytest.raises(ValueError, match="at least one backbone"):
        narrow_space(space, ["resnet18"])


def test_rank_backbones_scores_costs_and_reuses_the_feature_cache(write_study, tmp_path: Path) -> None:
    config, pm, space = _space(write_study, **TWO_MODELS)
    train, val = load_splits(config.data, task=config.task, seed=0, resolve=config.resolve_path)
    data = StudyData(train, val, cache_dir=tmp_path, progress=False)
    first = rank_backbones(
        space, registry=pm.registry, data=data, task="classification", image_size=32, cache_dir=tmp_path
    )
    assert sorted(r.label for r in first) == ["timm(test_efficientnet)", "timm(test_resnet)"]
    assert first[0].score >= first[1].score
    for r in first:
        assert r.error is None and r.num_params and r.num_params > 0 and r.forward_ms and r.forward_ms > 0
        assert set(r.scores) == {"logme"} and r.images == len(train)
    assert len(list(tmp_path.glob("features-*.json"))) == 2  # train+val features cached per backbone
    again = rank_backbones(
        space,
        registry=pm.registry,
        data=data,
        task="classification",
        image_size=32,
        cache_dir=tmp_path,
        score="hscore",
        all_scores=True,
    )
    assert len(list(tmp_path.glob("features-*.json"))) == 2  # hits, nothing recomputed
    assert {r.label: r.scores["logme"] for r in again} == pytest.approx({r.label: r.score for r in first})
    assert all(r.score_name == "hscore" and r.score == r.scores["hscore"] for r in again)


def test_a_failing_candidate_ranks_last_with_its_reason(write_study, tmp_path: Path, monkeypatch) -> None:
    # A weights file that is missing when the study is read is a config error now (checked up front),
    # so the candidate here fails later, when ranking builds it.
    config, pm, space = _space(
        write_study,
        backbone={"timm": {"model": "test_resnet", "weights": "random"}, "resnet18": {"weights": "random"}},
    )
    broken = pm.registry.get("backbone", "resnet18").cls

    def build(self, **options):  # type: ignore[no-untyped-def]
        raise FileNotFoundError(str(tmp_path / "missing.safetensors"))

    monkeypatch.setattr(broken, "build", build)
    train, val = load_splits(config.data, task=config.task, seed=0, resolve=config.resolve_path)
    ranking = rank_backbones(
        space,
        registry=pm.registry,
        data=StudyData(train, val, cache_dir=tmp_path, progress=False),
        task="classification",
        image_size=32,
    )
    assert [r.label for r in ranking] == ["timm", "resnet18"]
    assert ranking[1].error and "missing.safetensors" in ranking[1].error


def test_study_keeps_the_top_ranked_backbone_and_does_not_rank_again_on_resume(
    write_study, tmp_path, monkeypatch
):
    path = write_study(space=TWO_MODELS, search={"n_trials": 2, "rank": {"keep_top": 1}, "pruner": "none"})
    progress: list[tuple[str, int, int]] = []

    def on_event(name: str, **kw) -> None:
        if name == "progress":
            progress.append((kw["task"], kw["done"], kw["total"]))

    result = run_study(path, out_dir=tmp_path / "out", progress=False, on_event=on_event)
    ranking = result.study.user_attrs[RANK_ATTR]
    task = "ranking 2 backbone candidate(s) by logme"
    assert [(d, t) for name, d, t in progress if name == task] == [(0, 2), (1, 2), (2, 2)]
    assert ("decoding train images at 32px", 0, 48) in progress  # the ranking decodes them first (4 × 12)
    top = ranking[0]["params"]["model"]
    models = {t.user_attrs["choices"]["backbone.timm.model"] for t in result.study.trials}
    assert models == {top}

    import tlsearch.rank.study as rank_study

    def refuse(*a, **k):
        raise AssertionError("a resumed study must reuse its stored ranking")

    monkeypatch.setattr(rank_study, "rank_backbones", refuse)
    resumed = run_study(path, out_dir=tmp_path / "out", n_trials=3, progress=False)
    assert len(resumed.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3
    assert resumed.study.user_attrs[RANK_ATTR] == ranking


def test_order_first_enqueues_the_backbones_best_first(write_study, tmp_path) -> None:
    path = write_study(
        space=TWO_MODELS, search={"n_trials": 4, "rank": {"order_first": True}, "warm_start": False}
    )
    study = run_study(path, out_dir=tmp_path / "out", progress=False).study
    ranked = [r["params"]["model"] for r in study.user_attrs[RANK_ATTR]]
    first = [
        t.user_attrs["choices"]["backbone.timm.model"]
        for t in sorted(study.trials, key=lambda t: t.number)[:2]
    ]
    assert first == ranked


def test_cli_rank_prints_the_ranking(write_study, tmp_path) -> None:
    path = write_study(space=TWO_MODELS)
    runner = CliRunner()
    table = runner.invoke(main, ["rank", str(path), "--out", str(tmp_path / "out")])
    assert table.exit_code == 0, table.output
    assert "timm(test_efficientnet)" in table.output and "timm(test_resnet)" in table.output
    assert "logme" in table.output and "fwd ms" in table.output
    as_json = runner.invoke(
        main, ["rank", str(path), "--out", str(tmp_path / "out"), "--json", "--score", "hscore"]
    )
    rows = json.loads(as_json.stdout)
    assert [r["score_name"] for r in rows] == ["hscore", "hscore"]
    assert rows[0]["score"] >= rows[1]["score"]


@pytest.mark.parametrize("precision", ["auto", "bf16"])  # the ranking computes at the study's precision
def test_the_warm_start_linear_probe_reuses_the_rankings_features(write_study, tmp_path, precision) -> None:
    # the ranking and the trial build the same backbone, so one feature-cache key
    path = write_study(
        space={"backbone": {"efficientnet_lite0": {"weights": "packaged"}}},
        training={"epochs": 1, "precision": precision},
        search={"n_trials": 2, "warm_start": True, "rank": {"keep_top": 1}},
    )
    study = run_study(path, out_dir=tmp_path / "out", progress=False).study
    assert study.user_attrs[RANK_ATTR][0]["label"] == "efficientnet_lite0"  # above the random-weight one
    entries = {e.name for e in (tmp_path / "out").rglob("features-*.json")}
    assert len(entries) == len(study.user_attrs[RANK_ATTR])  # one per ranked backbone, none added by trials
    probe = min(study.trials, key=lambda t: t.number)
    assert probe.user_attrs["portfolio"] == "linear_probe"
    cache = probe.user_attrs["speed"]["feature_cache"]
    assert cache["hit"] is True and f"features-{cache['key']}.json" in entries


def test_a_vit_is_ranked_at_the_study_image_size(write_study, tmp_path: Path) -> None:
    """The ranking builds a backbone as a trial does: a ViT built for another size takes the study's."""
    config, pm, space = _space(
        write_study, backbone={"timm": {"model": "vit_tiny_patch16_224", "weights": "random"}}
    )
    train, val = load_splits(config.data, task=config.task, seed=0, resolve=config.resolve_path)
    data = StudyData(train, val, cache_dir=tmp_path, progress=False)
    (ranked,) = rank_backbones(
        space, registry=pm.registry, data=data, task="classification", image_size=32, cache_dir=tmp_path
    )
    assert ranked.error is None and ranked.score is not None
