"""Heads: the new layers trained on top of a backbone's features."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from torch import nn

from tlsearch.kinds._base import Plugin


class Head(Plugin):
    """Maps ``(N, in_features)`` features to ``(N, out_features)`` outputs (class logits, or values for regression).

    Required: :meth:`build`.
    """

    kind: ClassVar[str] = "head"

    @abstractmethod
    def build(self, in_features: int, out_features: int) -> nn.Module:
        """Create the head module."""
