"""The freezing helpers the built-ins share, now public in :mod:`tlsearch.kinds.freezing`.

Re-exported here so existing imports keep working; new code (and third-party strategies) import
them from :mod:`tlsearch.kinds.freezing`.
"""

from __future__ import annotations

from tlsearch.kinds.freezing import (
    NORM_TYPES,
    backbone_group_params,
    freeze_stats_where_frozen,
    norm_layers,
    norm_parameters,
    set_trainable,
)

__all__ = [
    "NORM_TYPES",
    "backbone_group_params",
    "freeze_stats_where_frozen",
    "norm_layers",
    "norm_parameters",
    "set_trainable",
]
