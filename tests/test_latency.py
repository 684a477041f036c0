"""Latency is measured once per architecture × input size × device, and only when a study reads it."""

from __future__ import annotations

import pytest
import torch
from optuna.trial import TrialState

import tlsearch.train.latency as latency_module
from tlsearch.config import parse_config
from tlsearch.search import run_study
from tlsearch.search.objectives import latency_needed
from tlsearch.train.latency import LATENCY_FILE, LatencyCache, latency_key


@pytest.fixture
def measured(monkeypatch):
    """The real measurement, counted: one entry per call, the model's input size."""
    calls: list[int] = []
    real = latency_module.measure_latency

    def counting(model, *, input_size, device="cpu", **kw):
        calls.append(input_size)
        return real(model, input_size=input_size, device=device, runs=2, warmup=1)

    monkeypatch.setattr(latency_module, "measure_latency", counting)
    return calls


def _net(width: int = 4) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )


def test_same_architecture_is_measured_once_and_read_back_from_the_study_cache(tmp_path, measured) -> None:
    cache = LatencyCache(tmp_path)
    first = cache.measure(_net(), input_size=16, device="cpu")
    again = LatencyCache(tmp_path).measure(_net(), input_size=16, device="cpu")  # other weights, new process
    assert measured == [16] and again == first and (tmp_path / LATENCY_FILE).is_file()
    cache.measure(_net(), input_size=24, device="cpu")  # another input size
    cache.measure(_net(width=8), input_size=16, device="cpu")  # another architecture
    assert measured == [16, 24, 16]


def test_the_key_depends_on_architecture_and_size_not_on_weights() -> None:
    a, b = _net(), _net()
    assert latency_key(a, input_size=16, device="cpu") == latency_key(b, input_size=16, device="cpu")
    assert latency_key(a, input_size=16, device="cpu") != latency_key(a, input_size=32, device="cpu")
    assert latency_key(a, input_size=16, device="cpu") != latency_key(_net(8), input_size=16, device="cpu")


def test_latency_is_needed_only_by_a_latency_objective_or_constraint(shapes_dir) -> None:
    base = {
        "name": "s",
        "data": {"folder": str(shapes_dir / "train")},
        "space": {"backbone": {"timm": {"model": "test_efficientnet"}}},
    }
    assert not latency_needed(parse_config(base))
    assert not latency_needed(parse_config({**base, "search": {"constraints": {"params": 10}}}))
    assert latency_needed(parse_config({**base, "search": {"constraints": {"latency_ms": 10}}}))
    assert latency_needed(parse_config({**base, "search": {"objectives": ["accuracy", "latency_ms"]}}))


def test_a_study_measures_each_architecture_once(write_study, tmp_path, measured) -> None:
    """Three trials of one architecture (the freezing strategy and lr change no layer): one measurement,
    and every trial records it for its constraint."""
    path = write_study(search={"n_trials": 3, "constraints": {"latency_ms": 1e6}})
    study = run_study(path, out_dir=tmp_path / "out", progress=False).study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3 and measured == [32]
    assert len({t.user_attrs["latency_ms"] for t in complete}) == 1
    assert all(t.user_attrs["constraints"][0] < 0 for t in complete)


def test_a_study_without_a_latency_objective_never_measures(write_study, tmp_path, measured) -> None:
    study = run_study(write_study(search={"n_trials": 2}), out_dir=tmp_path / "out", progress=False).study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert complete and measured == []
    assert all("latency_ms" not in t.user_attrs for t in complete)
    assert not (tmp_path / "out" / "cache" / LATENCY_FILE).exists()


def test_a_dropout_rate_is_not_an_architecture() -> None:
    def head(p: float) -> torch.nn.Module:
        return torch.nn.Sequential(_net(), torch.nn.Dropout(p), torch.nn.Linear(4, 2))

    assert latency_key(head(0.1), input_size=16, device="cpu") == latency_key(
        head(0.4), input_size=16, device="cpu"
    )


def test_a_rerank_reads_the_backbones_latency_from_the_study_cache(write_study, tmp_path, measured) -> None:
    from tlsearch.config import load_config, resolve_space
    from tlsearch.data import load_splits
    from tlsearch.rank import rank_backbones
    from tlsearch.registry import get_plugin_manager
    from tlsearch.search import StudyData

    config = load_config(write_study())
    pm = get_plugin_manager()
    space = resolve_space(config, pm.registry)
    train, val = load_splits(config.data, task=config.task, seed=0, resolve=config.resolve_path)
    data = StudyData(train, val, cache_dir=tmp_path, progress=False)
    for _ in range(2):
        (ranked,) = rank_backbones(
            space, registry=pm.registry, data=data, task="classification", image_size=32, cache_dir=tmp_path
        )
        assert ranked.forward_ms is not None and ranked.forward_ms >= 0
    assert measured == [32]


def test_a_cache_that_cannot_be_written_costs_a_measurement_not_the_trial(tmp_path, monkeypatch) -> None:
    """Bugs caught: a full disk failing the trial, or the temporary file left in the cache folder."""
    import os

    cache = LatencyCache(tmp_path)
    cache.put("kept", 1.5)

    def full_disk(src, dst):
        raise OSError("no space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    cache.put("lost", 2.5)  # logged, not raised
    assert cache.get("kept") == 1.5 and cache.get("lost") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATENCY_FILE]


def test_the_first_measurement_creates_the_cache_folder(tmp_path) -> None:
    """Bug caught: put() not creating a missing cache folder, so a new study never keeps a latency."""
    cache = LatencyCache(tmp_path / "out" / "cache")  # a study's cache folder, not made yet
    cache.put("key", 1.5)
    assert LatencyCache(tmp_path / "out" / "cache").get("key") == 1.5


def test_measuring_leaves_a_training_model_in_training_mode() -> None:
    """Bug caught: the model not put back in the mode it was in (a model measured between epochs
    would go on training in eval mode: BatchNorm statistics frozen, no dropout)."""
    model = _net().train()
    latency_module.measure_latency(model, input_size=16, device="cpu", runs=1, warmup=0)
    assert model.training
    model.eval()
    latency_module.measure_latency(model, input_size=16, device="cpu", runs=1, warmup=0)
    assert not model.training


def test_the_key_sees_a_parameter_shape_that_no_module_setting_shows() -> None:
    """Bug caught: parameter and buffer shapes left out of the key, so a plugin's module whose size
    lives only in its parameters (no ``extra_repr``) would read another size's latency."""

    class Scale(torch.nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(n, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight

    assert latency_key(Scale(3), input_size=16, device="cpu") != latency_key(
        Scale(1), input_size=16, device="cpu"
    )


def test_the_key_sees_the_module_types_that_no_parameter_shows() -> None:
    """Bug caught: the module tree left out of the key (a GELU and a ReLU network would share one)."""
    relu = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    gelu = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GELU())
    assert latency_key(relu, input_size=16, device="cpu") != latency_key(gelu, input_size=16, device="cpu")


def test_the_latency_is_the_fastest_timed_call_in_milliseconds(monkeypatch) -> None:
    """Bugs caught: seconds not converted to milliseconds (divided, or by another factor), the
    median or the warm-up calls taken instead of the fastest timed call."""
    ticks = iter([0.0, 1.0, 1.004, 2.0, 2.003, 3.0, 3.005])  # warm-up (one read), then 4, 3, 5 ms

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            return next(ticks)

    monkeypatch.setattr(latency_module, "time", Clock)
    ms = latency_module.measure_latency(_net(), input_size=16, device="cpu", runs=3, warmup=1)
    assert ms == pytest.approx(3.0, rel=1e-6)
