"""The data-derived default ``image_size``: no more upsampling than the images need.

A study that sets no ``data.image_size`` (and no backbone's own ``image_size``) trains each
backbone at a size derived from its training images rather than blindly at the backbone's native
size. Upsampling 8×8 digit scans to 224 px adds no information, costs about 12× the compute of
64 px and, within a fixed budget, leaves a fine-tune fewer epochs: on the real-data benchmark a
full fine-tune of Lite0 reached 0.983 validation accuracy at 48 px, 0.989 at 64 px and 0.983 at
32 px (benchmarks/README.md).

The rule (:func:`default_image_size`): the training images' median shorter side, rounded up to a
multiple of :data:`SIZE_STEP` (32, the stride of most CNNs and a multiple of the usual ViT patch
sizes), at least :data:`MIN_DEFAULT_SIZE` (64 px: below it, ImageNet features degrade quickly),
at most the backbone's native size (its pretrained resolution: larger images are downsampled to
it, as before). A backbone that takes only some sizes (:meth:`Backbone.input_sizes`: a fixed-size
model, or a ViT that takes multiples of its patch size, 14 for DINOv2) trains at the smallest of
them that is at least the derived size, or at its native size when none is smaller than it.

Only the image headers are read (Pillow's ``Image.open`` is lazy), at most :data:`MAX_SAMPLED`
of them, evenly spaced through the training split, so this costs milliseconds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from tlsearch.config import PluginChoice, ResolvedSpace

SIZE_STEP = 32
MIN_DEFAULT_SIZE = 64
MAX_SAMPLED = 512

__all__ = ["MIN_DEFAULT_SIZE", "SIZE_STEP", "default_image_size", "derived_image_size", "median_short_side"]


def median_short_side(paths: Sequence[Path], *, max_images: int = MAX_SAMPLED) -> int | None:
    """The median of the images' shorter sides (pixels), from at most ``max_images`` headers evenly
    spaced through ``paths``; None when there is no image or no header could be read (the study
    then keeps each backbone's native size)."""
    if not paths:
        return None
    step = max(1, math.ceil(len(paths) / max_images))
    sides: list[int] = []
    for path in paths[::step]:
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
        except (OSError, ValueError):  # the image check reports bad files; this is advisory
            continue
    return int(statistics.median_low(sides)) if sides else None


def default_image_size(
    short_side: int | None, *, native: int | None, accepted: Sequence[int] | None = None
) -> int | None:
    """The input size a backbone trains at when the study sets none (see the module doc), or None
    to keep the backbone's native size: when the images are as large as it (or larger), when the
    native size or the images' size is unknown, or when the sizes the backbone takes (``accepted``)
    have none at least the derived size and below the native one.

    >>> default_image_size(8, native=224)
    64
    >>> default_image_size(100, native=224)
    128
    >>> default_image_size(300, native=224) is None
    True
    >>> default_image_size(8, native=518, accepted=range(14, 1025, 14))  # a patch-14 ViT
    70
    """
    if short_side is None or native is None or short_side <= 0:
        return None
    size = max(MIN_DEFAULT_SIZE, math.ceil(short_side / SIZE_STEP) * SIZE_STEP)
    if accepted is not None:
        size = min((s for s in accepted if s >= size), default=native)
    if size >= native:
        return None
    return size


def derived_image_size(space: ResolvedSpace, backbone: PluginChoice, params: dict[str, Any]) -> int | None:
    """The data-derived default size of ``backbone`` (with its sampled ``params``) in a study that
    sets no ``image_size`` (:func:`tlsearch.data.sizes.default_image_size`): the native size is what
    the backbone's ``describe()`` reports as ``input_size``; None (its native size) when the study
    has no measured short side or the backbone reports no native size."""
    if space.data_short_side is None or backbone.plugin is None:
        return None
    try:
        plugin = backbone.plugin(**params)
        native = (plugin.describe() or {}).get("input_size")
        accepted = plugin.input_sizes()
    except Exception:  # noqa: BLE001 - describe() is advisory; the trial reports a plugin that cannot build
        return None
    if not isinstance(native, int) or isinstance(native, bool):
        return None
    return default_image_size(space.data_short_side, native=native, accepted=accepted)
