"""The four plugin kinds: :class:`Backbone`, :class:`Head`, :class:`FreezingStrategy`, :class:`Regularizer`."""

from tlsearch.kinds._base import Plugin
from tlsearch.kinds.backbone import Backbone, multiples_of
from tlsearch.kinds.freezing import FreezingStrategy, ParamGroup
from tlsearch.kinds.head import Head
from tlsearch.kinds.model import BuiltBackbone, TransferModel
from tlsearch.kinds.portfolio import PortfolioEntry
from tlsearch.kinds.regularizer import Regularizer

KINDS: dict[str, type[Plugin]] = {
    "backbone": Backbone,
    "head": Head,
    "freezing": FreezingStrategy,
    "regularizer": Regularizer,
}

__all__ = [
    "KINDS",
    "Backbone",
    "BuiltBackbone",
    "FreezingStrategy",
    "Head",
    "ParamGroup",
    "Plugin",
    "PortfolioEntry",
    "Regularizer",
    "TransferModel",
    "multiples_of",
]
