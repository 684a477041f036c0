"""Training augmentation policies on device batches: each changes the batch, per image, the same way
under the same seed; ``none`` leaves it alone; the old ``augment: true/false`` still means crop+flip/none."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from tlsearch.config import parse_config
from tlsearch.data.policies import (
    AugmentPolicy,
    apply_operations,
    draw_erase_params,
    policy_name,
    random_erase,
)
from tlsearch.errors import ConfigError
from tlsearch.testing import TrainEverything, decoded_images, synthetic_images, tiny_transfer_model
from tlsearch.train import Trainer, TrainSettings


def _trainer(**settings: object) -> Trainer:
    model = tiny_transfer_model(num_outputs=3)
    return Trainer(
        model,
        strategy=TrainEverything(),
        num_outputs=3,
        settings=TrainSettings(epochs=1, batch_size=8, **settings),  # type: ignore[arg-type]
    )


def _batch(n: int = 8) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )


def _train_inputs(trainer: Trainer, images: torch.Tensor, seed: int) -> torch.Tensor:
    """The training input of one batch, with the draws a trainer makes for an epoch from ``seed``."""
    (draws,) = trainer._epoch_draws([torch.arange(len(images))], torch.Generator().manual_seed(seed))
    return trainer._inputs(images, train=True, draws=draws)


POLICIES = [
    {"augment": "crop_flip"},
    {"augment": "trivial"},
    {"augment": "randaugment", "randaugment_magnitude": 15},
    {"augment": "none", "random_erasing": 1.0},
]


@pytest.mark.parametrize("settings", POLICIES, ids=lambda s: "+".join(map(str, s.values())))
def test_each_policy_changes_the_batch_and_is_deterministic_under_a_seed(settings: dict) -> None:
    """Bugs caught: a policy that never runs (falls back to the plain batch); draws from an unseeded
    generator (two runs with one seed differ); the seed ignored (another seed gives the same batch)."""
    trainer = _trainer(**settings)
    images = _batch()
    plain = trainer._inputs(images, train=False)
    first = _train_inputs(trainer, images, seed=3)
    assert not torch.allclose(first, plain)
    assert torch.equal(first, _train_inputs(_trainer(**settings), images, seed=3))
    with torch.random.fork_rng():  # building a tiny model reseeds the global stream: move it on
        torch.manual_seed(99)
        assert torch.equal(first, _train_inputs(trainer, images, seed=3))  # bug: drawn from that stream
    assert not torch.equal(first, _train_inputs(trainer, images, seed=4))


@pytest.mark.parametrize("settings", POLICIES, ids=lambda s: "+".join(map(str, s.values())))
def test_evaluation_inputs_are_only_normalised_whatever_the_policy(settings: dict) -> None:
    """Bug caught: a policy's step (random erasing, here on every image) applied to validation batches too."""
    from tlsearch.data.augment import Normalizer

    trainer = _trainer(**{**settings, "random_erasing": 1.0})
    images = _batch()
    plain = Normalizer(trainer.model.data_config, device=images.device)(images)
    torch.testing.assert_close(trainer._inputs(images, train=False), plain, rtol=0, atol=0)


def test_operations_without_the_epochs_draws_still_run() -> None:
    """A batch augmented outside an epoch (no draws: a plugin or a test calling ``_inputs``) takes a
    fresh seed. Bug caught: a seed drawn out of int64's range."""
    trainer = _trainer(augment="trivial")
    images = _batch()
    assert trainer._inputs(images, train=True).shape == trainer._inputs(images, train=False).shape


def test_none_leaves_the_batch_unchanged_and_the_old_switch_still_works() -> None:
    """Bugs caught: ``none`` still cropping; ``augment: false`` (the old switch) becoming a random policy."""
    images = _batch()
    for augment in ("none", False):
        trainer = _trainer(augment=augment)
        assert not trainer.augments()
        assert torch.equal(_train_inputs(trainer, images, seed=3), trainer._inputs(images, train=False))
    assert _trainer(augment=True).policy.name == "crop_flip"
    assert policy_name(True) == "crop_flip" and policy_name(False) == "none"


def test_crop_flip_draws_what_it_always_drew() -> None:
    """Bug caught: the erasing or operation draws taken from the generator before the crop's, which
    would change every existing study's crop+flip trials."""
    from tlsearch.data.augment import draw_crop_params, random_resized_crop_flip

    trainer = _trainer(augment="crop_flip")
    images = _batch()
    expected = random_resized_crop_flip(
        trainer._inputs(images, train=False).contiguous(),
        params=draw_crop_params(len(images), generator=torch.Generator().manual_seed(3)),
    )
    torch.testing.assert_close(_train_inputs(trainer, images, seed=3), expected)


@pytest.mark.parametrize("transform", [v2.TrivialAugmentWide(), v2.RandAugment(num_ops=2, magnitude=9)])
def test_operations_draw_per_image_not_once_per_batch(transform: v2.Transform) -> None:
    """What torchvision's transforms lack on a batched tensor: one draw per image. Bug caught: the
    transform applied to the whole batch (every image the same operation and strength)."""
    same = _batch(1).expand(16, -1, -1, -1).contiguous()
    out = apply_operations(same, transform, seed=0)
    assert out.dtype == torch.uint8 and out.shape == same.shape
    assert len({out[i].sum().item() for i in range(16)}) > 4
    assert torch.equal(out, apply_operations(same, transform, seed=0))
    state = torch.get_rng_state()
    apply_operations(same, transform, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left as it was


def test_random_erasing_erases_one_rectangle_per_chosen_image() -> None:
    """Bugs caught: the probability inverted; rectangles outside the documented area range."""
    x = torch.ones(64, 3, 40, 40)
    params = draw_erase_params(64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(random_erase(x, params, probability=0.0), x)
    erased = random_erase(x, params, probability=1.0)
    fraction = (erased[:, 0] == 0).float().mean(dim=(1, 2))
    assert (fraction > 0).all() and (fraction <= 1 / 3 + 0.05).all() and fraction.mean() > 0.05
    assert torch.equal(erased[:, 0] == 0, erased[:, 2] == 0)  # every channel of the rectangle
    half = random_erase(x, params, probability=0.5)
    assert 16 < int(((half[:, 0] == 0).flatten(1).any(1)).sum()) < 48


@pytest.mark.parametrize("augment", ["trivial", "randaugment"])
def test_a_trial_trains_with_a_policy(augment: str) -> None:
    """The policy runs inside the real training loop (draws per batch, uint8 operations, crop)."""
    images, labels = synthetic_images(24, size=32, num_classes=3)
    model = tiny_transfer_model(num_outputs=3)
    data = decoded_images(images, labels, model.data_config)
    trainer = Trainer(
        model,
        strategy=TrainEverything(),
        num_outputs=3,
        settings=TrainSettings(epochs=1, batch_size=8, augment=augment, random_erasing=0.25),
    )
    result = trainer.fit(data, data)
    assert result.history and trainer.augments()


@pytest.mark.parametrize(
    ("training", "fragments"),
    [
        (
            {"augment": "autoaugment"},
            ["training.augment", "'autoaugment'", "none, crop_flip, trivial, randaugment"],
        ),
        ({"augment": ["trivial", "mixup"]}, ["training.augment", "'mixup'", "valid choices"]),
        ({"randaugment_magnitude": 31}, ["training.randaugment_magnitude", "[0, 30]", "31"]),
        ({"random_erasing": 1.5}, ["training.random_erasing", "[0, 1]", "1.5"]),
    ],
)
def test_bad_policy_settings_are_config_errors(training: dict, fragments: list[str]) -> None:
    raw = {"name": "x", "data": {"folder": "."}, "space": {"backbone": ["timm"]}, "training": training}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, source="s.yaml")
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_a_bad_policy_fails_when_the_trainer_is_built() -> None:
    with pytest.raises(ConfigError, match="'cutout'.*none, crop_flip, trivial, randaugment"):
        _trainer(augment="cutout")
    with pytest.raises(ConfigError, match="randaugment_magnitude"):
        AugmentPolicy("randaugment", magnitude=40)
