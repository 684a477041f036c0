"""The real Trainer's less-travelled paths, pinned (issue 12 part 3, survivors of the mutation run
of ``tlsearch/train/loop.py``): the clip-norm check, the regression losses, the reported training
loss, the default evaluation batch, the calibration images a regularizer is given, and where a
non-finite loss stops the trial.

Each test names the one-line bug it catches. Everything runs on tiny models and 16 px images.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tlsearch_builtins.freezing import FullFinetune, LinearProbe
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tlsearch.data.augment import Normalizer
from tlsearch.errors import ConfigError
from tlsearch.kinds import FreezingStrategy, Regularizer, TransferModel
from tlsearch.testing import TinyBackbone, decoded_images, synthetic_images, tiny_transfer_model
from tlsearch.train import NonFiniteError, Trainer, TrainSettings

NUM_CLASSES = 3


def _trainer(
    model: TransferModel,
    strategy: FreezingStrategy | None = None,
    regularizers: Any = (),
    task: str = "classification",
    **settings: Any,
) -> Trainer:
    return Trainer(
        model,
        strategy=strategy or FullFinetune(),
        regularizers=list(regularizers),
        task=task,
        num_outputs=NUM_CLASSES if task == "classification" else 1,
        settings=TrainSettings(
            **{
                "epochs": 1,
                "batch_size": 8,
                "lr": 1e-2,
                "compile": "never",
                "feature_cache": False,
                "precision": "fp32",
                "augment": False,
                "warmup": 0.0,
                **settings,
            }
        ),
    )


def _decoded(model: TransferModel, n: int = 16):
    images, labels = synthetic_images(n, size=16, num_classes=NUM_CLASSES)
    return decoded_images(images, labels, model.data_config)


class LossOptionOnly(Regularizer):
    """Label smoothing ``epsilon`` as a loss option, and no penalty (the solver includes it)."""

    name = "loss_option_only"

    def __init__(self, epsilon: float = 0.1, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.epsilon = epsilon

    def loss_options(self) -> dict[str, Any]:
        return {"label_smoothing": self.epsilon}


# --- settings checked before any work -------------------------------------------------------------


@pytest.mark.parametrize("clip", [0.0, -1.0])
def test_a_clip_norm_that_is_not_positive_is_refused_with_its_value(clip: float) -> None:
    """Bugs caught: the check dropped, or ``> 0`` weakened to ``>= 0`` (clip 0 zeroes every step)."""
    with pytest.raises(ConfigError, match=rf"clip_grad_norm must be > 0 .* got {clip}"):
        _trainer(tiny_transfer_model(TinyBackbone()), clip_grad_norm=clip)


# --- the task loss ------------------------------------------------------------------------------


def test_the_regression_losses_are_the_ones_named() -> None:
    """Bugs caught: ``huber`` computing MSE (or the reverse), ``auto`` not meaning MSE, the
    loss returned as None. Residuals of 3 make Huber (1.5 + …) and MSE (9) far apart."""
    outputs = torch.tensor([[0.0], [1.0], [-2.0]])
    targets = torch.tensor([[3.0], [1.5], [1.0]])
    model = tiny_transfer_model(TinyBackbone(), num_outputs=1)
    huber = _trainer(model, task="regression", loss="huber").loss(outputs, targets)
    mse = _trainer(model, task="regression", loss="mse").loss(outputs, targets)
    auto = _trainer(model, task="regression").loss(outputs, targets)
    assert float(huber) == pytest.approx(float(F.huber_loss(outputs, targets)))
    assert float(mse) == pytest.approx(float(F.mse_loss(outputs, targets)))
    assert float(auto) == float(mse)
    assert abs(float(huber) - float(mse)) > 1.0


def test_the_classification_loss_without_loss_options_is_plain_cross_entropy() -> None:
    """Bug caught: the training loss returned as None (or not the cross-entropy) without options."""
    outputs = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 2])
    loss = _trainer(tiny_transfer_model(TinyBackbone())).loss(outputs, targets)
    assert float(loss) == pytest.approx(float(F.cross_entropy(outputs, targets)))


# --- what fit reports ---------------------------------------------------------------------------


def test_train_loss_is_the_image_weighted_mean_of_the_steps_losses() -> None:
    """Bugs caught: the running sum not weighted by the batch's images, subtracted instead of
    added, divided the wrong way. A linear probe with lr 0 on uneven batches (8 + 8 + 4
    images): every step's loss is the loss at the starting weights, so the mean over the 20
    images is the cross-entropy of the starting head on all of them."""
    model = tiny_transfer_model(TinyBackbone())
    data = _decoded(model, n=20)
    trainer = _trainer(model, LinearProbe(), optimizer="sgd", lr=0.0)
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2)
    model.eval()
    with torch.no_grad():
        start = F.cross_entropy(
            model(Normalizer(model.data_config, device="cpu")(images)), torch.from_numpy(data.targets)
        )
    result = trainer.fit(data, data)
    assert result.extras["epochs"][0]["train_images"] == 20
    assert result.history[0]["train_loss"] == pytest.approx(float(start), rel=1e-5)
    assert "data_seconds" not in result.extras["epochs"][0]  # measured only when profiling


def test_the_training_loss_has_the_loss_options_and_val_loss_does_not() -> None:
    """Bug caught: the step's loss computed without the regularizers' loss options (``train``
    defaulting to False): with lr 0 the reported train loss is the smoothed cross-entropy at the
    starting weights, the val loss the plain one."""
    model = tiny_transfer_model(TinyBackbone())
    with torch.no_grad():  # confident logits, where smoothing moves the loss
        model.head.weight.mul_(50.0)  # type: ignore[operator]
    data = _decoded(model, n=16)
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2)
    model.eval()
    with torch.no_grad():
        outputs = model(Normalizer(model.data_config, device="cpu")(images))
    targets = torch.from_numpy(data.targets)
    smoothed = float(F.cross_entropy(outputs, targets, label_smoothing=0.3))
    plain = float(F.cross_entropy(outputs, targets))
    trainer = _trainer(model, LinearProbe(), [LossOptionOnly(epsilon=0.3)], optimizer="sgd", lr=0.0)
    result = trainer.fit(data, data)
    assert abs(smoothed - plain) > 1e-2
    assert result.history[0]["train_loss"] == pytest.approx(smoothed, rel=1e-5)
    assert result.history[0]["val_loss"] == pytest.approx(plain, rel=1e-5)


class RecordingHead(nn.Linear):
    """A linear head that records the batch size of each call in eval mode."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.eval_sizes.append(len(x))
        return super().forward(x)


def test_evaluation_batches_default_to_four_training_batches() -> None:
    """Bugs caught: the default evaluation batch not 4 × ``batch_size`` (÷ 4, or None)."""
    head = RecordingHead(TinyBackbone().build().num_features, NUM_CLASSES)
    model = tiny_transfer_model(TinyBackbone(), head=head)
    _trainer(model, batch_size=4).fit(_decoded(model, n=40), _decoded(model, n=40))
    assert head.eval_sizes == [16, 16, 8]


def test_the_feature_cache_reports_how_long_it_took() -> None:
    """Bug caught: ``seconds`` a clock reading (``now + started``) instead of a duration."""
    import time

    model = tiny_transfer_model(TinyBackbone())
    data = _decoded(model)
    before = time.perf_counter()
    result = _trainer(model, LinearProbe(), feature_cache=True, solve_probe=False).fit(data, data)
    wall = time.perf_counter() - before
    assert result.used_feature_cache
    assert 0 <= result.extras["feature_cache"]["seconds"] <= wall
    # no cache folder: computed here, nothing read back (not reported as a hit of a cache)
    assert result.extras["feature_cache"]["key"] is None and result.extras["feature_cache"]["hit"] is False
    assert result.extras["data_placement"] != "features"


# --- calibration images -------------------------------------------------------------------------


class RecordsCalibration(Regularizer):
    """Asks for ``calibration_images`` and records what ``calibrate`` is given."""

    name = "records_calibration"

    def __init__(self, wanted: int, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.calibration_images = wanted
        self.calls: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        self.head_at_call: list[torch.Tensor] = []

    def calibrate(self, model: nn.Module, *, batches: Any, num_outputs: int, task: str) -> None:
        self.calls.append([(x.clone(), y.clone()) for x, y in batches])
        self.head_at_call.append(model.head.weight.detach().clone())  # type: ignore[union-attr]


def test_each_regularizer_that_asks_gets_its_calibration_images_at_the_starting_weights() -> None:
    """Bugs caught: the calibration skipped (or given to a regularizer that asks for none, or
    only to those asking for more than one image); the images augmented; not split into
    training batches; given after a step. The largest request decides the count."""
    model = tiny_transfer_model(TinyBackbone())
    start_head = model.head.weight.detach().clone()
    data = _decoded(model, n=16)
    one, five, none = RecordsCalibration(1), RecordsCalibration(5), RecordsCalibration(0)
    trainer = _trainer(model, regularizers=[one, five, none], batch_size=2, augment="crop_flip")
    trainer.fit(data, data)
    assert none.calls == []
    assert len(one.calls) == 1 and len(five.calls) == 1
    batches = five.calls[0]
    assert [len(y) for _, y in batches] == [2, 2, 1]
    torch.testing.assert_close(five.head_at_call[0], start_head)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0))[:5]
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2)[order]
    plain = Normalizer(model.data_config, device="cpu")(images)  # un-augmented
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), plain)
    torch.testing.assert_close(torch.cat([y for _, y in batches]), torch.from_numpy(data.targets)[order])


# --- non-finite losses --------------------------------------------------------------------------


class NaNPenalty(Regularizer):
    """A penalty that is NaN from its first call (a plugin gone wrong)."""

    name = "nan_penalty"

    def penalty(self, model: nn.Module, *, images: Any, features: Any) -> torch.Tensor:
        return torch.tensor(float("nan"))


def test_a_non_finite_loss_stops_the_trial_at_the_step_it_appears() -> None:
    """Bugs caught: the per-step check on the CPU never (or every other step) run, inverted, or
    raising for a finite loss: the first step's NaN stops the trial after that one step, with
    the step in the message."""
    steps: list[int] = []
    handle = register_optimizer_step_pre_hook(lambda *a: steps.append(1))
    model = tiny_transfer_model(TinyBackbone())
    data = _decoded(model, n=32)
    try:
        with pytest.raises(NonFiniteError, match="non-finite at epoch 0, by step 1$"):
            _trainer(model, regularizers=[NaNPenalty()]).fit(data, data)
    finally:
        handle.remove()
    assert len(steps) == 1


# --- the class-balanced sampler's batches -------------------------------------------------------


class SamplesOnlyClassZero(Regularizer):
    """A sampler that draws only class-0 images, recording each training batch's targets."""

    name = "samples_only_class_zero"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.batches: list[torch.Tensor] = []

    def class_sampling_weights(self, counts: torch.Tensor) -> torch.Tensor:
        weights = torch.zeros(len(counts))
        weights[0] = 1.0
        return weights

    def transform_batch(self, images: torch.Tensor, targets: torch.Tensor, *, num_outputs: int):
        self.batches.append(targets.clone())
        return images, targets


@pytest.mark.parametrize(("n", "sizes"), [(17, [8, 9]), (20, [8, 8, 4]), (16, [8, 8])])
def test_the_sampler_draws_by_its_weights_and_merges_a_last_batch_of_one(n: int, sizes: list[int]) -> None:
    """Bugs caught: the sampler's weights ignored; a final batch of one image kept (BatchNorm
    cannot train on it) or a longer final batch merged; the batches returned as None."""
    model = tiny_transfer_model(TinyBackbone())
    sampler = SamplesOnlyClassZero()
    _trainer(model, regularizers=[sampler]).fit(_decoded(model, n=n), _decoded(model, n=6))
    assert [len(b) for b in sampler.batches] == sizes
    assert all(int(t) == 0 for t in torch.cat(sampler.batches))


# --- when the head is solved rather than trained ------------------------------------------------


class EpochProbe(LinearProbe):
    """A frozen backbone whose strategy gives no ``probe_l2``: the head trains by epochs."""

    name = "epoch_probe"

    @property
    def probe_l2(self) -> float | None:
        return None


class HeadPenalty(Regularizer):
    """A penalty on the head's weights (which the L-BFGS solver would leave out)."""

    name = "head_penalty"

    def penalty(self, model: nn.Module, *, images: Any, features: Any) -> torch.Tensor:
        return 1e-3 * model.head.weight.pow(2).sum()  # type: ignore[union-attr, operator]


def test_the_probe_is_solved_only_when_every_condition_holds() -> None:
    """Bugs caught in ``solves_probe``: a regression head, a strategy without ``probe_l2``, a
    penalty the solver would drop, or an uncached trial solved anyway (an ``and`` turned ``or``,
    an ``is not`` turned ``is``); and a solved epoch's ``train_seconds`` not a duration."""

    def solves(strategy: FreezingStrategy, regs: Any = (), task: str = "classification", **kw: Any) -> bool:
        model = tiny_transfer_model(
            TinyBackbone(), num_outputs=NUM_CLASSES if task == "classification" else 1
        )
        settings = {"feature_cache": True, **kw}
        return _trainer(model, strategy, regs, task=task, **settings).solves_probe()

    assert solves(LinearProbe())
    assert solves(LinearProbe(), [LossOptionOnly()])
    assert not solves(LinearProbe(), [HeadPenalty()])
    assert not solves(LinearProbe(), task="regression")
    assert not solves(EpochProbe())
    assert not solves(LinearProbe(), feature_cache=False)
    assert not solves(LinearProbe(), solve_probe=False)
    assert not solves(FullFinetune())

    import time

    model = tiny_transfer_model(TinyBackbone())
    data = _decoded(model)
    before = time.perf_counter()
    result = _trainer(model, LinearProbe(), feature_cache=True).fit(data, data)
    wall = time.perf_counter() - before
    assert "probe_solver" in result.extras
    assert 0 <= result.extras["epochs"][0]["train_seconds"] <= wall


# --- the kept epoch -----------------------------------------------------------------------------


def test_the_result_holds_the_kept_epochs_metrics_and_per_class_counts_not_the_last_ones() -> None:
    """Bugs caught: the per-class counts taken from every epoch (the last one wins) instead of
    the kept one; the result's metrics the last epoch's; ``seconds`` a clock reading. With lr 0
    nothing trains, and each epoch start forces the head's prediction: class 0 in epoch 0 (10 of
    16 validation images right), class 1 in epoch 1 (3 of 16)."""
    import time

    model = tiny_transfer_model(TinyBackbone())
    images, _ = synthetic_images(16, size=16, num_classes=NUM_CLASSES)
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 3)
    data = decoded_images(images, labels, model.data_config)

    def force(epoch: int) -> None:
        with torch.no_grad():
            model.head.weight.zero_()  # type: ignore[operator]
            model.head.bias.copy_(torch.eye(NUM_CLASSES)[epoch] * 100.0)  # type: ignore[operator]

    trainer = _trainer(model, LinearProbe(), optimizer="sgd", lr=0.0, epochs=2)
    before = time.perf_counter()
    result = trainer.fit(data, data, on_epoch_start=force)
    wall = time.perf_counter() - before
    assert [h["accuracy"] for h in result.history] == [10 / 16, 3 / 16]
    assert result.best_epoch == 0 and result.metrics["accuracy"] == 10 / 16
    assert result.extras["per_class_counts"] == [
        [10, 10, 16],
        [0, 3, 0],
        [0, 3, 0],
    ]  # per class: tp, support, predicted
    assert 0 <= result.seconds <= wall


# --- an epoch's random draws --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("augment", "erasing"), [("crop_flip", 0.0), ("crop_flip", 0.25), ("randaugment", 0.25)]
)
def test_an_epochs_draws_come_from_the_trials_generator_in_a_fixed_order(
    augment: str, erasing: float
) -> None:
    """Bugs caught: erasing parameters not drawn (then taken from the global RNG, out of the
    trial's seeded stream) or drawn when erasing is off (shifting every later draw); per-image
    operation seeds drawn without operations, or from the wrong range. The order is crop/flip,
    erasing, operation seeds, so a ``crop_flip`` trial draws what it always did."""
    from tlsearch.data.augment import draw_crop_params
    from tlsearch.data.policies import draw_erase_params

    model = tiny_transfer_model(TinyBackbone())
    trainer = _trainer(model, augment=augment, random_erasing=erasing)
    batches = [torch.arange(8), torch.arange(8, 17)]
    draws = trainer._epoch_draws(batches, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    crops = draw_crop_params(17, generator=g).split([8, 9])
    erases = draw_erase_params(17, generator=g).split([8, 9]) if erasing else (None, None)
    seeds = torch.randint(2**62, (2,), generator=g).tolist() if augment == "randaugment" else [0, 0]
    assert len(draws) == 2
    for draw, crop, erase, seed in zip(draws, crops, erases, seeds, strict=True):
        assert draw.crop is not None and torch.equal(draw.crop, crop)
        assert (draw.erase is None) if erase is None else torch.equal(draw.erase, erase)
        assert draw.seed == seed
    if augment == "randaugment":
        assert seeds[0] != seeds[1] and max(seeds) > 2**40
