"""The confidence penalty passes the regularizer contract and is −β × the mean prediction entropy."""

from __future__ import annotations

import math

import torch
from tlsearch_example_plugin.regularizer import ConfidencePenalty

from tlsearch.testing import RegularizerContract, tiny_transfer_model


class TestConfidencePenalty(RegularizerContract):
    plugin = ConfidencePenalty
    params = {"beta": 0.5}


def test_the_penalty_is_minus_beta_times_the_entropy() -> None:
    model = tiny_transfer_model()
    features = torch.randn(6, model.num_features)
    p = model.head(features).softmax(-1)
    entropy = float(-(p * p.log()).sum(-1).mean())
    term = ConfidencePenalty(beta=0.5).penalty(model, images=None, features=features)
    assert term is not None
    assert math.isclose(float(term.detach()), -0.5 * entropy, rel_tol=1e-5)


def test_a_uniform_prediction_gets_the_largest_reward() -> None:
    model = tiny_transfer_model()
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    term = ConfidencePenalty(beta=0.2).penalty(
        model, images=None, features=torch.randn(4, model.num_features)
    )
    assert term is not None and math.isclose(float(term.detach()), -0.2 * math.log(3), rel_tol=1e-6)


def test_its_gradient_lowers_confidence() -> None:
    model = tiny_transfer_model()
    features = torch.randn(8, model.num_features)
    before = float(model.head(features).softmax(-1).max(-1).values.mean())
    optimizer = torch.optim.SGD(model.head.parameters(), lr=0.5)
    for _ in range(20):
        optimizer.zero_grad()
        ConfidencePenalty(beta=1.0).penalty(model, images=None, features=features).backward()
        optimizer.step()
    assert float(model.head(features).softmax(-1).max(-1).values.mean()) < before
