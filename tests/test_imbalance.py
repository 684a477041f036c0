"""Class-imbalance tools: the losses against their papers' definitions and torch's, the plugins'
contracts, and the class-balanced sampler and the loss options driven through the real trainer."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tlsearch_builtins.regularizers import (
    REGULARIZERS,
    BalancedSampler,
    ClassWeightedLoss,
    FocalLoss,
    LogitAdjustment,
)

from tlsearch.kinds import Regularizer
from tlsearch.registry import get_plugin_manager
from tlsearch.testing import (
    RegularizerContract,
    TrainEverything,
    synthetic_images,
    tiny_transfer_model,
    train_and_record,
)
from tlsearch.train.losses import class_counts, class_weights, classification_loss, focal_loss


class TestClassWeightedLoss(RegularizerContract):
    plugin = ClassWeightedLoss


class TestFocalLoss(RegularizerContract):
    plugin = FocalLoss


class TestLogitAdjustment(RegularizerContract):
    plugin = LogitAdjustment


class TestBalancedSampler(RegularizerContract):
    plugin = BalancedSampler


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(12, 4, generator=g) * 2, torch.randint(0, 4, (12,), generator=g)


def test_the_imbalance_plugins_are_registered_builtins() -> None:
    names = {cls.name for cls in REGULARIZERS}
    assert {"class_weights", "focal_loss", "logit_adjustment", "balanced_sampler"} <= names
    registered = get_plugin_manager().registry.names("regularizer")
    assert {"class_weights", "focal_loss", "logit_adjustment", "balanced_sampler"} <= set(registered)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_loss_at_gamma_zero_is_cross_entropy_with_and_without_weights(smoothing: float) -> None:
    """Bugs caught: focal loss averaged differently from cross-entropy (so γ is not the only change),
    class weights normalised by N instead of the true classes' weights."""
    outputs, targets = _batch()
    weight = torch.tensor([0.5, 1.0, 2.0, 4.0])
    assert focal_loss(outputs, targets, gamma=0.0, label_smoothing=smoothing) == pytest.approx(
        float(F.cross_entropy(outputs, targets, label_smoothing=smoothing)), rel=1e-5
    )
    assert focal_loss(outputs, targets, gamma=0.0, weight=weight, label_smoothing=smoothing) == pytest.approx(
        float(F.cross_entropy(outputs, targets, weight=weight, label_smoothing=smoothing)), rel=1e-5
    )


def test_focal_loss_down_weights_easy_examples_more_than_hard_ones() -> None:
    """Bug caught: the modulating factor (1 - p)^γ on the wrong probability (p instead of 1 - p)."""
    easy = torch.tensor([[4.0, 0.0, 0.0]])  # p_true ≈ 0.96
    hard = torch.tensor([[0.0, 2.0, 0.0]])  # p_true ≈ 0.11
    label = torch.tensor([0])
    ratio_easy = focal_loss(easy, label, gamma=2.0) / F.cross_entropy(easy, label)
    ratio_hard = focal_loss(hard, label, gamma=2.0) / F.cross_entropy(hard, label)
    p_easy = torch.softmax(easy, 1)[0, 0]
    assert float(ratio_easy) == pytest.approx(float((1 - p_easy) ** 2), rel=1e-5)
    assert ratio_easy < 0.01 < 0.5 < ratio_hard


def test_inverse_class_weights_are_scikit_learns_balanced_and_match_torch_weight() -> None:
    """Bugs caught: weights ∝ frequency instead of its inverse; the weight not reaching the loss."""
    targets = torch.tensor([0] * 10 + [1] * 3 + [2] * 1)
    counts = class_counts(targets.numpy(), num_classes=3)
    weights = class_weights(counts, scheme="inverse")
    assert weights.tolist() == pytest.approx([14 / (3 * 10), 14 / (3 * 3), 14 / 3])
    outputs = torch.randn(14, 3, generator=torch.Generator().manual_seed(1))
    loss = classification_loss(outputs, targets, options={"class_weighting": "inverse"}, counts=counts)
    assert float(loss) == pytest.approx(float(F.cross_entropy(outputs, targets, weight=weights)))


def test_effective_number_weights_follow_cui_et_al() -> None:
    """Bugs caught: β^n instead of 1 - β^n; weights not rescaled to sum to the class count; a class
    with no image weighted instead of 0."""
    counts = torch.tensor([1000.0, 10.0, 0.0])
    beta = 0.99
    weights = class_weights(counts, scheme="effective", beta=beta)
    raw = torch.tensor([(1 - beta) / (1 - beta**1000), (1 - beta) / (1 - beta**10)])
    assert weights[:2].tolist() == pytest.approx((raw * 2 / raw.sum()).tolist(), rel=1e-5)
    assert weights[2] == 0.0
    assert float(weights[1] / weights[0]) == pytest.approx(float(raw[1] / raw[0]), rel=1e-5)
    with pytest.raises(ValueError, match="1.5"):
        class_weights(counts, scheme="effective", beta=1.5)
    with pytest.raises(ValueError, match="inverse, effective"):
        class_weights(counts, scheme="square")


def test_the_losses_default_beta_is_the_class_weights_plugins() -> None:
    """Bug caught: the β a direct caller gets (``class_weights``, ``positive_weights``, a loss whose
    options name no β) drifting from the ``class_weights`` regularizer's default."""
    from tlsearch.train.losses import positive_weights

    beta = ClassWeightedLoss.hyperparameters["beta"].default
    counts = torch.tensor([500.0, 20.0, 3.0])
    assert beta == 0.999
    torch.testing.assert_close(
        class_weights(counts, scheme="effective"), class_weights(counts, scheme="effective", beta=beta)
    )
    torch.testing.assert_close(
        positive_weights(counts, total=600, scheme="effective"),
        positive_weights(counts, total=600, scheme="effective", beta=beta),
    )
    from tlsearch.train.losses import multilabel_loss

    logits, labels = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.eye(3).repeat(2, 1)
    plain, given = (
        {"class_weighting": "effective"},
        {"class_weighting": "effective", "class_weighting_beta": beta},
    )
    multilabel = {"positives": torch.tensor([2.0, 2.0, 2.0]), "total": 6}
    torch.testing.assert_close(
        multilabel_loss(logits, labels, options=plain, **multilabel),
        multilabel_loss(logits, labels, options=given, **multilabel),
    )
    torch.testing.assert_close(
        classification_loss(logits, labels.argmax(1), options=plain, counts=counts),
        classification_loss(logits, labels.argmax(1), options=given, counts=counts),
    )


def test_logit_adjustment_adds_tau_log_prior_to_the_logits() -> None:
    """Bug caught: the prior subtracted (which favours the frequent classes even more)."""
    outputs, targets = _batch(2)
    counts = torch.tensor([40.0, 10.0, 5.0, 1.0])
    loss = classification_loss(outputs, targets, options={"logit_adjustment_tau": 1.5}, counts=counts)
    shifted = outputs + 1.5 * (counts / counts.sum()).log()
    assert float(loss) == pytest.approx(float(F.cross_entropy(shifted, targets)))


class _SeenTargets(Regularizer):
    """Records the targets of every training batch (a transform that changes nothing)."""

    name = "seen_targets"
    uses_inputs = True

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.seen: list[torch.Tensor] = []

    def transform_batch(
        self, images: torch.Tensor, targets: torch.Tensor, *, num_outputs: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append(targets.clone())
        return images, targets


def _ten_to_one(steps: int = 8) -> dict[str, Any]:
    images, _ = synthetic_images(11, num_classes=2, size=16)
    targets = torch.tensor([0] * 10 + [1])
    return {"images": images, "targets": targets, "steps_per_epoch": steps, "batch_size": 11}


def test_the_balanced_sampler_balances_a_ten_to_one_set_in_the_real_trainer() -> None:
    """Bugs caught: the sampler's weights ignored by the trainer; weights per class used as
    probabilities per image without indexing by the target (which keeps the 10:1 ratio)."""
    spy = _SeenTargets()
    train_and_record(
        tiny_transfer_model(num_outputs=2),
        TrainEverything(),
        regularizers=[BalancedSampler(power=1.0), spy],
        epochs=2,
        **_ten_to_one(),
    )
    seen = torch.cat(spy.seen)
    assert len(seen) == 2 * 8 * 11  # every epoch still draws as many images as the set has
    assert 0.4 < float(seen.float().mean()) < 0.6  # the rare class in about half the draws


def test_without_the_sampler_the_trainer_sees_the_natural_ratio() -> None:
    spy = _SeenTargets()
    train_and_record(
        tiny_transfer_model(num_outputs=2), TrainEverything(), regularizers=[spy], **_ten_to_one(2)
    )
    assert float(torch.cat(spy.seen).float().mean()) == pytest.approx(1 / 11)


def test_the_trainer_trains_with_the_loss_options_and_validates_with_plain_cross_entropy() -> None:
    """Bugs caught: the imbalance options dropped by the trainer; validation loss changed by them
    (so ``val_loss`` would not compare trials)."""
    from tlsearch.train.loop import Trainer, TrainSettings

    model = tiny_transfer_model(num_outputs=2)
    trainer = Trainer(
        model,
        strategy=TrainEverything(),
        regularizers=[FocalLoss(gamma=2.0), ClassWeightedLoss(scheme="inverse", beta=0.999)],
        num_outputs=2,
        settings=TrainSettings(compile="never", feature_cache=False),
    )
    trainer.class_counts = torch.tensor([10.0, 1.0])
    outputs, targets = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    weight = class_weights(trainer.class_counts, scheme="inverse")
    expected = focal_loss(outputs, targets, gamma=2.0, weight=weight)
    assert float(trainer.loss(outputs, targets)) == pytest.approx(float(expected))
    assert float(trainer.loss(outputs, targets, train=False)) == pytest.approx(
        float(F.cross_entropy(outputs, targets))
    )


@pytest.mark.parametrize("gamma", [0.06, 0.5, 2.0])
def test_focal_gradients_stay_finite_on_confident_predictions(gamma: float) -> None:
    """Bug caught: ``(1 - p)^γ`` with γ < 1 has an infinite derivative where p rounds to 1, and
    autograd's ∞ · 0 turned every gradient NaN; a solved probe's line search then overflowed
    ("value cannot be converted to type float without overflow") and failed the trial."""
    from tlsearch.train.losses import multilabel_loss

    outputs = torch.tensor([[120.0, 0.0, -5.0], [0.0, 2.0, 1.0]], requires_grad=True)
    targets = torch.tensor([0, 2])
    loss = focal_loss(outputs, targets, gamma=gamma, weight=torch.tensor([1.0, 2.0, 3.0]))
    loss.backward()
    assert outputs.grad is not None and torch.isfinite(outputs.grad).all(), outputs.grad
    # the confident row's term is 0 and so is its gradient; the other row still learns
    assert outputs.grad[0].abs().max() < 1e-12 and outputs.grad[1].abs().max() > 1e-3

    logits = torch.tensor([[120.0, -120.0], [0.5, -0.5]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    multilabel_loss(logits, labels, options={"focal_gamma": gamma}).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all(), logits.grad


def test_a_solved_probe_with_focal_loss_below_one_converges() -> None:
    """The trial that failed in benchmarks/bench_imbalance.py: an L-BFGS probe on separable
    long-tailed features with focal γ 0.06, class weights and logit adjustment (its line search
    overflowed once a prediction's p rounded to 1)."""
    from tlsearch.train.probe import ProbeSolver

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 16, generator=generator) * 3
    targets = torch.arange(10).repeat_interleave(torch.tensor([107, 78, 54, 41, 29, 21, 15, 10, 7, 5]))
    features = (centres[targets] + torch.randn(len(targets), 16, generator=generator)).relu()
    counts = class_counts(targets, num_classes=10)
    options: dict[str, Any] = {"focal_gamma": 0.063, "logit_adjustment_tau": 1.24}
    options |= {"class_weighting": "effective", "class_weighting_beta": 0.955}

    def loss(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return classification_loss(outputs, target, options=options, counts=counts)

    linear = torch.nn.Linear(16, 10)
    step = ProbeSolver(linear, features, targets, l2=1e-4, loss=loss, epochs=1).step()
    assert step.converged and torch.isfinite(linear.weight).all()
    assert (linear(features).argmax(1) == targets).float().mean() > 0.95


def test_focal_loss_on_soft_targets_with_weights_at_gamma_zero_is_cross_entropy() -> None:
    """Bug caught: soft (mixed) targets with class weights normalised like hard ones (by the true
    classes' weights, which soft targets do not have) instead of by N as ``F.cross_entropy`` does."""
    outputs, targets = _batch(1)
    soft = 0.7 * F.one_hot(targets, 4).float() + 0.3 * F.one_hot(targets.roll(1), 4).float()
    weight = torch.tensor([0.5, 1.0, 2.0, 4.0])
    assert focal_loss(outputs, soft, gamma=0.0, weight=weight) == pytest.approx(
        float(F.cross_entropy(outputs, soft, weight=weight)), rel=1e-5
    )


@pytest.mark.parametrize("options", [{"class_weighting": "inverse"}, {"logit_adjustment_tau": 1.0}])
def test_a_loss_option_that_needs_the_class_counts_refuses_to_run_without_them(options: dict) -> None:
    """Bug caught: either option alone silently training unweighted when no counts are given."""
    with pytest.raises(ValueError, match="need the training class counts"):
        classification_loss(torch.zeros(2, 3), torch.tensor([0, 1]), options=options)


def test_a_multilabel_trainer_counts_each_labels_positives_and_weighs_its_training_loss() -> None:
    """Bugs caught: a multi-label fit not counting its training images per label (the class
    weights then have no counts); the weighted training loss not returned; validation weighted."""
    from tlsearch.testing._loop import decoded_images
    from tlsearch.train.loop import Trainer, TrainSettings
    from tlsearch.train.losses import multilabel_loss

    model = tiny_transfer_model(num_outputs=3)
    images, _ = synthetic_images(12, size=16, num_classes=3)
    vectors = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]).repeat(4, 1)
    train = decoded_images(images[:9], vectors[:9], model.data_config)
    val = decoded_images(images[9:], vectors[9:], model.data_config)
    options = ClassWeightedLoss(scheme="inverse", beta=0.999)
    trainer = Trainer(
        model,
        strategy=TrainEverything(),
        regularizers=[options],
        num_outputs=3,
        task="multilabel",
        settings=TrainSettings(
            epochs=1, batch_size=8, compile="never", feature_cache=False, precision="fp32"
        ),
    )
    trainer.fit(train, val)
    assert trainer.class_counts is not None and trainer.class_counts.tolist() == [9.0, 3.0, 3.0]
    outputs = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 1.0, -2.0]])
    targets = vectors[:2]
    expected = multilabel_loss(
        outputs, targets, options=options.loss_options(), positives=trainer.class_counts, total=9
    )
    assert float(trainer.loss(outputs, targets)) == pytest.approx(float(expected))
    plain = multilabel_loss(outputs, targets)
    assert float(trainer.loss(outputs, targets, train=False)) == pytest.approx(float(plain))
    assert float(expected) != pytest.approx(float(plain))  # the weights matter on this batch
