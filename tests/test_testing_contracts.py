"""tlsearch.testing's contracts catch broken plugins (and pass good ones).

A file of deliberately broken plugins, each tested by a contract, runs in a separate pytest
process; each listed check must fail, and the good plugins must pass everything.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from tlsearch_builtins.freezing import FullFinetune, LinearProbe

from tlsearch.testing import TinyBackbone, snapshot, synthetic_images, tiny_transfer_model, train_and_record

BROKEN = textwrap.dedent(
    '''
    import torch
    from torch import nn
    from tlsearch.kinds import FreezingStrategy, Head, ParamGroup, Regularizer
    from tlsearch.testing import (
        BackboneContract, FreezingStrategyContract, HeadContract, RegularizerContract, TinyBackbone,
    )
    from tlsearch_builtins.freezing import LinearProbe
    from tlsearch_builtins.heads import LinearHead
    from tlsearch_builtins.regularizers import L2SP


    class ProbeThatTrainsBatchNorm(FreezingStrategy):
        """Claims a frozen backbone but lets BatchNorm statistics drift."""
        name = "leaky_probe"
        backbone_frozen = True
        def setup(self, model):
            for p in model.backbone.parameters():
                p.requires_grad_(False)
            return [ParamGroup("head", list(model.head.parameters()))]
        def set_train_mode(self, model):
            pass


    class FreezesButKeepsStatsMoving(FreezingStrategy):
        """Freezes the stem's weights but leaves its BatchNorm statistics updating (no policy)."""
        name = "drifting_stem"
        def setup(self, model):
            stem = {id(p) for p in model.backbone_groups()[0]}
            for p in model.parameters():
                p.requires_grad_(id(p) not in stem)
            return [ParamGroup("all", [p for p in model.parameters() if p.requires_grad])]
        def set_train_mode(self, model):
            pass


    class ForgetsTheHead(FreezingStrategy):
        """Everything trainable, but the head is in no param group."""
        name = "forgets_head"
        def setup(self, model):
            return [ParamGroup("backbone", list(model.backbone.parameters()))]


    class IgnoresOutFeatures(Head):
        """Always 3 outputs."""
        name = "three"
        def build(self, in_features, out_features):
            return nn.Linear(in_features, 3)


    class MissingGroup(TinyBackbone):
        """Forgets the last layer group."""
        name = "missing_group"
        def build(self, **options):
            built = super().build(**options)
            built.layer_groups = built.layer_groups[:-1]
            return built


    class ReversedGroups(TinyBackbone):
        """Groups output → input."""
        name = "reversed_groups"
        def build(self, **options):
            built = super().build(**options)
            built.layer_groups = built.layer_groups[::-1]
            return built


    class LeavesHooks(Regularizer):
        """Adds a forward hook in setup and never removes it."""
        name = "leaves_hooks"
        def setup(self, model, *, num_outputs, task):
            model.backbone.register_forward_hook(lambda m, a, o: None)


    class VectorPenalty(Regularizer):
        """Returns a vector instead of a scalar."""
        name = "vector_penalty"
        def penalty(self, model, *, images, features):
            return features.mean(0)


    class TestLeakyProbe(FreezingStrategyContract):
        plugin = ProbeThatTrainsBatchNorm

    class TestDriftingStem(FreezingStrategyContract):
        plugin = FreezesButKeepsStatsMoving

    class TestForgetsHead(FreezingStrategyContract):
        plugin = ForgetsTheHead

    class TestIgnoresOutFeatures(HeadContract):
        plugin = IgnoresOutFeatures

    class TestMissingGroup(BackboneContract):
        plugin = MissingGroup

    class TestReversedGroups(BackboneContract):
        plugin = ReversedGroups

    class TestLeavesHooks(RegularizerContract):
        plugin = LeavesHooks

    class TestVectorPenalty(RegularizerContract):
        plugin = VectorPenalty

    class TestGoodProbe(FreezingStrategyContract):
        plugin = LinearProbe

    class TestGoodHead(HeadContract):
        plugin = LinearHead

    class TestGoodBackbone(BackboneContract):
        plugin = TinyBackbone

    class TestGoodRegularizer(RegularizerContract):
        plugin = L2SP
    '''
)

MUST_FAIL = {
    "TestLeakyProbe.test_backbone_frozen_means_frozen",
    "TestLeakyProbe.test_batchnorm_follows_the_policy",
    "TestDriftingStem.test_batchnorm_follows_the_policy",
    "TestForgetsHead.test_groups_cover_trainable_parameters_once",
    "TestForgetsHead.test_frozen_parameters_unchanged_and_trained_ones_moved",
    "TestIgnoresOutFeatures.test_output_shape[1]",
    "TestIgnoresOutFeatures.test_every_parameter_trains[1]",
    "TestIgnoresOutFeatures.test_learns_a_linear_target",
    "TestMissingGroup.test_layer_groups_cover_every_parameter_once",
    "TestReversedGroups.test_layer_groups_are_ordered_input_to_output",
    "TestLeavesHooks.test_trains_with_it",
    "TestVectorPenalty.test_penalty_is_a_finite_scalar",
    "TestVectorPenalty.test_trains_with_it",
}


def test_contracts_fail_broken_plugins_and_pass_good_ones(tmp_path: Path) -> None:
    (tmp_path / "test_broken.py").write_text(BROKEN)
    report = tmp_path / "report.xml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    failed, passed = set(), set()
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}.{case.get('name')}"
        (failed if case.find("failure") is not None or case.find("error") is not None else passed).add(name)
    assert failed >= MUST_FAIL, f"not caught: {sorted(MUST_FAIL - failed)}"
    assert not {n for n in failed if n.startswith("TestGood")}, sorted(failed)
    assert {n.split(".")[0] for n in passed} >= {
        "TestGoodProbe",
        "TestGoodHead",
        "TestGoodBackbone",
        "TestGoodRegularizer",
    }


def test_train_and_record_records_each_epoch_of_the_real_trainer() -> None:
    """The helper records requires_grad and BatchNorm modes as set for each epoch, and changes weights."""
    model = tiny_transfer_model(TinyBackbone())
    images, labels = synthetic_images(16, size=16)
    start = snapshot(model)
    records = train_and_record(model, LinearProbe(), images=images, targets=labels, epochs=1)
    assert records[0].trainable == {"head.weight", "head.bias"}
    assert torch.equal(start["param:backbone.stem.0.weight"], snapshot(model)["param:backbone.stem.0.weight"])
    assert not torch.equal(start["param:head.weight"], snapshot(model)["param:head.weight"])
    records = train_and_record(model, FullFinetune(), images=images, targets=labels, epochs=1)
    assert all(records[0].bn_training.values())
    assert set(records[0].metrics) >= {"train_loss", "val_loss", "accuracy"}


def test_synthetic_images_differ_by_structure_not_colour() -> None:
    images, labels = synthetic_images(60, size=16, num_classes=3)
    means = torch.stack([images[labels == c].mean() for c in range(3)])
    assert means.max() - means.min() < 0.1
    assert images.shape == (60, 3, 16, 16) and labels.bincount().tolist() == [20, 20, 20]
