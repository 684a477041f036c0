"""The built-in heads: the contract checks, plus what each one specifically promises."""

from __future__ import annotations

import pytest
import torch
from tlsearch_builtins.heads import CosineHead, LinearHead, MLPHead, RegressionHead

from tlsearch.registry import get_plugin_manager
from tlsearch.testing import HeadContract


class TestLinearHead(HeadContract):
    plugin = LinearHead


class TestLinearHeadWithDropout(HeadContract):
    plugin = LinearHead
    params = {"dropout": 0.3}


class TestMLPHead(HeadContract):
    plugin = MLPHead
    params = {"hidden_dim": 32, "activation": "relu"}


class TestCosineHead(HeadContract):
    plugin = CosineHead


class TestRegressionHead(HeadContract):
    plugin = RegressionHead


class TestRegressionHeadWithHiddenLayer(HeadContract):
    plugin = RegressionHead
    params = {"hidden_dim": 128, "dropout": 0.1}


def test_cosine_logits_are_bounded_by_the_learnable_scale() -> None:
    head = CosineHead(init_scale=10.0).build(16, 4)
    logits = head(torch.randn(32, 16) * 100)
    assert logits.abs().max() <= 10.0 + 1e-4
    assert torch.allclose(head(torch.ones(1, 16)), head(torch.ones(1, 16) * 7), atol=1e-5)  # norm-invariant
    assert any(name == "log_scale" for name, _ in head.named_parameters())


def test_regression_head_starts_at_zero_for_any_number_of_outputs() -> None:
    for outputs in (1, 3):
        head = RegressionHead().build(16, outputs)
        assert torch.equal(head(torch.randn(4, 16)), torch.zeros(4, outputs))


def test_mlp_rejects_an_unknown_activation() -> None:
    with pytest.raises(ValueError, match="valid choices: gelu, relu, silu"):
        MLPHead(activation="tanh")


def test_every_builtin_head_is_registered_with_its_hyperparameters() -> None:
    heads = get_plugin_manager().registry.plugins["head"]
    for cls in (LinearHead, MLPHead, CosineHead, RegressionHead):
        info = heads[cls.name]
        assert info.cls is cls
        assert set(info.to_dict()["hyperparameters"]) == set(cls.hyperparameters)
        assert info.cls.summary()
