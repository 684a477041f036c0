"""Built-in heads."""

from __future__ import annotations

from typing import Any

from torch import nn

from tlsearch import hookimpl
from tlsearch.kinds import Head


class LinearHead(Head):
    """One linear layer on the pooled features: the standard transfer-learning classifier."""

    name = "linear"

    def build(self, in_features: int, out_features: int) -> nn.Module:
        return nn.Linear(in_features, out_features)


@hookimpl
def tlsearch_register_heads(register: Any) -> None:
    register.add(LinearHead)
