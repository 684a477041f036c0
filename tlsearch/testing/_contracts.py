"""Base test classes that plugin authors subclass in pytest to inherit the checks every plugin must pass.

Set ``plugin`` to your class (and ``params`` to the hyperparameters to test with)::

    from tlsearch.testing import HeadContract

    class TestGeMHead(HeadContract):
        plugin = GeMHead
        params = {"p": 3.0}

The classes are not collected by pytest themselves (their names do not start with ``Test``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from tlsearch.kinds import (
    Backbone,
    BuiltBackbone,
    FreezingStrategy,
    Head,
    ParamGroup,
    Plugin,
    Regularizer,
    TransferModel,
)
from tlsearch.kinds._base import RESERVED_PARAMS
from tlsearch.kinds._names import NAME_PATTERN
from tlsearch.space import Categorical, Fixed, Float, Int, Required
from tlsearch.testing._loop import train_and_record
from tlsearch.testing._tiny import TinyBackbone, synthetic_images, tiny_transfer_model


class PluginContract:
    """Checks common to every kind: a name, a docstring, valid hyperparameter declarations."""

    plugin: ClassVar[type[Plugin]]
    params: ClassVar[dict[str, Any]] = {}

    def make_plugin(self) -> Any:
        return self.plugin(**self.params)

    def test_name_is_valid(self) -> None:
        assert NAME_PATTERN.match(self.plugin.name), (
            f"name {self.plugin.name!r} must match {NAME_PATTERN.pattern}"
        )

    def test_has_docstring(self) -> None:
        doc = (self.plugin.__doc__ or "").strip()
        assert doc and doc != (self.plugin.__mro__[1].__doc__ or "").strip(), (
            "the class docstring documents the plugin"
        )

    def test_hyperparameters_are_declared_properly(self) -> None:
        for name, hp in self.plugin.hyperparameters.items():
            assert NAME_PATTERN.match(name) and name not in RESERVED_PARAMS, name
            assert isinstance(hp, (Float, Int, Categorical, Fixed, Required)), (name, hp)
            if isinstance(hp, (Float, Int)) and hp.default is not None:
                assert hp.low <= hp.default <= hp.high, (
                    f"{name}: default {hp.default} outside [{hp.low}, {hp.high}]"
                )
            if isinstance(hp, Categorical) and hp.default is not None:
                assert hp.default in hp.choices, f"{name}: default {hp.default!r} not among {hp.choices}"

    def test_instantiates_with_declared_bounds(self) -> None:
        """The search may sample any value in a range: the plugin must accept both ends."""
        for end in ("low", "high"):
            values = dict(self.params)
            for name, hp in self.plugin.hyperparameters.items():
                if isinstance(hp, (Float, Int)) and name not in self.params:
                    values[name] = getattr(hp, end)
            self.plugin(**values)


class BackboneContract(PluginContract):
    """Builds; maps images to ``(N, num_features)``; its layer groups cover every parameter exactly
    once and are ordered input → output; its data config and info are usable."""

    plugin: ClassVar[type[Backbone]]
    #: keyword options for ``build`` (e.g. ``{"load_weights": False}``, ``{"input_size": 64}``)
    build_options: ClassVar[dict[str, Any]] = {}
    #: the side of the random test images fed to the built module (pick what the backbone takes)
    image_size: ClassVar[int] = 32

    @pytest.fixture(scope="class")
    @classmethod
    def built(cls) -> BuiltBackbone:
        torch.manual_seed(0)
        return cls().make_plugin().build(**cls.build_options)

    def test_features_shape(self, built: BuiltBackbone) -> None:
        built.module.eval()
        with torch.no_grad():
            out = built.module(torch.randn(2, 3, self.image_size, self.image_size))
        assert out.shape == (2, built.num_features)
        assert torch.isfinite(out).all()

    def test_layer_groups_cover_every_parameter_once(self, built: BuiltBackbone) -> None:
        TransferModel(built, nn.Linear(built.num_features, 2))  # raises otherwise
        assert len(built.layer_groups) >= 2, "freezing strategies need at least two layer groups"

    def test_layer_groups_are_ordered_input_to_output(self, built: BuiltBackbone) -> None:
        order: dict[str, int] = {}
        handles = []

        def record(name: str) -> Any:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                order.setdefault(name, len(order))

            return hook

        for name, module in built.module.named_modules():
            if any(True for _ in module.parameters(recurse=False)):
                handles.append(module.register_forward_hook(record(name)))
        built.module.eval()
        with torch.no_grad():
            built.module(torch.randn(1, 3, self.image_size, self.image_size))
        for h in handles:
            h.remove()
        firsts = []
        for group in built.layer_groups:
            calls = [order[n.rpartition(".")[0]] for n in group if n.rpartition(".")[0] in order]
            if calls:
                firsts.append(min(calls))
        assert firsts == sorted(firsts), f"layer groups are not in forward order: first calls {firsts}"

    def test_data_config_and_info(self, built: BuiltBackbone) -> None:
        cfg = built.data_config
        assert cfg.input_size >= 8 and len(cfg.mean) == 3 and len(cfg.std) == 3
        assert built.info.get("params") == sum(p.numel() for p in built.module.parameters())

    def test_describe_is_a_dict(self) -> None:
        assert isinstance(self.make_plugin().describe(), dict)

    def test_a_size_it_declares_builds_and_runs(self) -> None:
        """Built for ``input_size`` (a study's ``image_size``, or the data-derived default that
        :meth:`Backbone.input_sizes` allows) and fed images of that size: the smallest size of at
        least 40 px that it declares, or 40 px when it declares none (any size). A size it declares
        but refuses would fail every trial at that size."""
        plugin = self.make_plugin()
        declared = plugin.input_sizes()
        size = min((s for s in declared if s >= 40), default=None) if declared is not None else 40
        assert size is not None, f"input_sizes() declares no size of at least 40 px: {declared}"
        built = plugin.build(**{**self.build_options, "input_size": size})
        built.module.eval()
        with torch.no_grad():
            out = built.module(torch.randn(1, 3, size, size))
        assert out.shape == (1, built.num_features), f"input_size {size}"


class HeadContract(PluginContract):
    """Maps ``(N, in_features)`` to ``(N, out_features)`` for classification and for one regression
    output; every parameter trains; batch size 1 works in eval mode; an ``init_from_data`` method,
    if the head module has one, leaves it usable. ``in_features`` sets the feature width tested."""

    plugin: ClassVar[type[Head]]
    #: the feature width the head is built for in the checks
    in_features: ClassVar[int] = 16

    @pytest.mark.parametrize("out_features", [1, 3])
    def test_output_shape(self, out_features: int) -> None:
        head = self.make_plugin().build(self.in_features, out_features)
        head.eval()
        with torch.no_grad():
            assert head(torch.randn(5, self.in_features)).shape == (5, out_features)
            assert head(torch.randn(1, self.in_features)).shape == (1, out_features)

    @pytest.mark.parametrize("out_features", [1, 3])
    def test_every_parameter_trains(self, out_features: int) -> None:
        torch.manual_seed(0)
        head = self.make_plugin().build(self.in_features, out_features)
        head.train()
        before = {n: p.detach().clone() for n, p in head.named_parameters()}
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
        x, y = torch.randn(16, self.in_features), torch.randn(16, out_features)
        for _ in range(3):
            optimizer.zero_grad()
            out = head(x)
            assert out.shape == y.shape, f"output shape {tuple(out.shape)}, expected {tuple(y.shape)}"
            nn.functional.mse_loss(out, y).backward()
            optimizer.step()
        still = [n for n, p in head.named_parameters() if torch.equal(p, before[n])]
        assert not still, f"parameters that never changed: {still}"

    def test_learns_a_linear_target(self) -> None:
        """A head must be able to fit an easy regression target (checks wiring, init, scale)."""
        torch.manual_seed(0)
        head = self.make_plugin().build(self.in_features, 1)
        x = torch.randn(64, self.in_features)
        y = x[:, :1] - 0.5 * x[:, 1:2]
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
        head.eval()  # no dropout noise while fitting
        first: float | None = None
        for _ in range(150):
            optimizer.zero_grad()
            out = head(x)
            assert out.shape == y.shape, f"output shape {tuple(out.shape)}, expected {tuple(y.shape)}"
            loss = nn.functional.mse_loss(out, y)
            first = first if first is not None else float(loss.detach())
            loss.backward()
            optimizer.step()
        assert first is not None and float(loss.detach()) < 0.5 * first

    def test_init_from_data_keeps_the_head_usable(self) -> None:
        """A head module with ``init_from_data`` (see :class:`~tlsearch.kinds.Head`) accepts the
        training features and class indices as the trainer gives them, and still gives finite
        outputs of the right shape afterwards. Skipped for a head without it."""
        torch.manual_seed(0)
        head = self.make_plugin().build(self.in_features, 3)
        if not callable(getattr(head, "init_from_data", None)):
            pytest.skip("the head has no init_from_data")
        features, targets = torch.randn(12, self.in_features), torch.arange(12) % 3
        with torch.no_grad():
            head.init_from_data(features, targets)
        head.eval()
        with torch.no_grad():
            out = head(features)
        assert out.shape == (12, 3) and torch.isfinite(out).all()


class FreezingStrategyContract(PluginContract):
    """Over a few epochs in the real trainer: the param groups cover every trainable parameter once;
    a parameter frozen during an epoch is bit-identical after it and one trained has moved; each
    BatchNorm layer follows the policy (by default the trainer's: eval mode, running statistics kept,
    when all its parameters are frozen that epoch; train mode, statistics updated, otherwise);
    ``backbone_frozen`` is true to its word.

    A strategy that documents another BatchNorm policy overrides :meth:`batchnorm_should_train`.
    """

    plugin: ClassVar[type[FreezingStrategy]]
    #: epochs of the recorded run (raise it to cover a schedule: ``gradual_unfreeze``'s steps)
    epochs: ClassVar[int] = 3

    def make_model(self) -> TransferModel:
        return tiny_transfer_model(TinyBackbone())

    @pytest.fixture(scope="class")
    @classmethod
    def run(cls) -> tuple[TransferModel, FreezingStrategy, list[Any]]:
        model = cls().make_model()
        strategy = cls().make_plugin()
        images, labels = synthetic_images(32, size=16)
        records = train_and_record(model, strategy, images=images, targets=labels, epochs=cls.epochs)
        return model, strategy, records

    def batchnorm_should_train(
        self, strategy: FreezingStrategy, *, module_name: str, params: list[str], trainable: set[str]
    ) -> bool:
        """Whether the BatchNorm layer ``module_name`` (own parameters ``params``, full names) should
        run in train mode, its statistics updating, in an epoch where ``trainable`` train.

        Default: the trainer's policy (:meth:`FreezingStrategy.set_train_mode`): a layer whose
        parameters are all frozen runs in eval mode; any other trains. Override for a strategy that
        documents another policy (BitFit trains BatchNorm biases with the statistics frozen).
        """
        return not params or any(p in trainable for p in params)

    def test_groups_cover_trainable_parameters_once(self) -> None:
        model = self.make_model()
        groups = self.make_plugin().setup(model)
        ids = [id(p) for g in groups for p in g.params]
        assert len(ids) == len(set(ids)), "a parameter is in two param groups"
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert trainable <= set(ids), (
            "a trainable parameter is in no param group: the optimizer would skip it"
        )

    def test_frozen_parameters_unchanged_and_trained_ones_moved(self, run: Any) -> None:
        model, _, records = run
        for record in records:
            for name, _ in model.named_parameters():
                key = f"param:{name}"
                same = torch.equal(record.before[key], record.after[key])
                if name in record.trainable:
                    assert not same, f"epoch {record.epoch}: {name} is trainable but did not move"
                else:
                    assert same, f"epoch {record.epoch}: {name} is frozen but changed"

    def test_batchnorm_follows_the_policy(self, run: Any) -> None:
        """Checked on the epoch's own freezing: a strategy that changes ``requires_grad`` in
        ``on_epoch_start`` must see the modes for that epoch, not the previous one's."""
        model, strategy, records = run
        for record in records:
            for module_name, training in record.bn_training.items():
                module = model.get_submodule(module_name)
                params = [f"{module_name}.{n}" for n, _ in module.named_parameters(recurse=False)]
                expected = self.batchnorm_should_train(
                    strategy, module_name=module_name, params=params, trainable=record.trainable
                )
                assert training == expected, (
                    f"epoch {record.epoch}: BatchNorm {module_name} is in "
                    f"{'train' if training else 'eval'} mode but the policy says "
                    f"{'train' if expected else 'eval'} (its parameters trainable: "
                    f"{[p in record.trainable for p in params]})"
                )

    def test_batchnorm_in_eval_mode_keeps_its_statistics(self, run: Any) -> None:
        model, _, records = run
        for record in records:
            for module_name, training in record.bn_training.items():
                for stat in ("running_mean", "running_var"):
                    key = f"buffer:{module_name}.{stat}"
                    same = torch.equal(record.before[key], record.after[key])
                    assert same != training, (
                        f"epoch {record.epoch}: {module_name}.{stat} (training={training})"
                    )

    def test_backbone_frozen_means_frozen(self, run: Any) -> None:
        model, strategy, records = run
        if not strategy.backbone_frozen:
            return
        for record in records:
            assert not any(n.startswith("backbone.") for n in record.trainable)
            assert not any(record.bn_training.values()), (
                "a frozen backbone must keep its BatchNorm statistics"
            )


class RegularizerContract(PluginContract):
    """Options are dicts; ``transform_batch`` keeps shapes and returns valid (soft) targets; ``penalty``
    is None or a finite scalar (with ``images=None`` too unless ``uses_inputs``); a few steps of the
    real trainer with it run and the model changes; ``teardown`` leaves the model as it found it
    (no hooks)."""

    plugin: ClassVar[type[Regularizer]]

    def test_options_are_dicts(self) -> None:
        reg = self.make_plugin()
        for method in ("backbone_options", "optimizer_options", "loss_options"):
            assert isinstance(getattr(reg, method)(), dict)

    def test_transform_batch(self) -> None:
        torch.manual_seed(0)
        reg = self.make_plugin()
        images, labels = synthetic_images(8, size=16)
        x, y = reg.transform_batch(images.clone(), labels.clone(), num_outputs=3)
        assert x.shape == images.shape and torch.isfinite(x).all()
        if y.ndim == 1:
            assert torch.equal(y, labels)
        else:
            assert y.shape == (8, 3) and torch.allclose(y.sum(1), torch.ones(8)) and (y >= 0).all()

    def test_penalty_is_a_finite_scalar(self) -> None:
        model = tiny_transfer_model()
        reg = self.make_plugin()
        reg.setup(model, num_outputs=3, task="classification")
        images, _ = synthetic_images(4, size=16)
        try:
            features = model.forward_features(images)
            for imgs in (images, None) if not reg.uses_inputs else (images,):
                term = reg.penalty(model, images=imgs, features=features)
                assert term is None or (term.ndim == 0 and math.isfinite(float(term.detach())))
        finally:
            reg.teardown(model)

    def test_trains_with_it(self) -> None:
        model = tiny_transfer_model()
        before = [p.detach().clone() for p in model.parameters()]
        hooks_before = _hook_count(model)
        images, labels = synthetic_images(16, size=16)
        records = train_and_record(
            model,
            TrainEverything(),
            regularizers=[self.make_plugin()],
            images=images,
            targets=labels,
            epochs=1,
        )
        assert all(math.isfinite(v) for r in records for v in r.losses)
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
        assert _hook_count(model) == hooks_before, "teardown must remove the hooks setup added"


class TrainEverything(FreezingStrategy):
    """Every parameter trains at the base learning rate (the strategy regularizer contracts train with)."""

    name = "train_everything"

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        for p in model.parameters():
            p.requires_grad_(True)
        return [ParamGroup("all", list(model.parameters()), 1.0)]


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
