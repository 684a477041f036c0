"""Backbones: pretrained feature extractors."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from tlsearch.kinds._base import Plugin
from tlsearch.kinds.model import BuiltBackbone


class Backbone(Plugin):
    """A pretrained feature extractor (timm, torchvision, a local file …).

    Required: :meth:`build`, returning a :class:`~tlsearch.kinds.BuiltBackbone` (the module, its
    pooled-feature width, its :class:`~tlsearch.preprocessing.DataConfig`, its layer groups and
    ``info``). Optional: :meth:`describe`, :meth:`input_sizes`, and the classmethods
    :meth:`~tlsearch.kinds.Plugin.check_space` / :meth:`~tlsearch.kinds.Plugin.check_available`.
    ``family`` groups related backbones in listings and reports.

    **Weights.** tlsearch does not load weights for a backbone: it declares a ``weights``
    hyperparameter and honours it in ``build``. The built-ins' forms are ``hub`` (download; offline
    with nothing cached is an error, never random weights), ``random`` (on purpose), and a file
    (``.safetensors``, or ``.pth`` loaded with ``torch.load(weights_only=True)``). A relative file
    path is meant from the study file's folder: make it absolute in ``check_space`` (it receives
    ``study_dir``), where the file is also checked once before any trial; a trial's ``build`` then
    only ever sees absolute paths. A form the backbone cannot honour (``hub`` for a model with no
    hub) is refused in ``check_space`` with the valid forms. Check that a hub answers in
    ``check_available``, not in ``build``.

    ``build`` receives options as keywords; a backbone ignores those it cannot honour (and says so
    in its docstring):

    * ``drop_path_rate`` (float): asked for by regularizers (stochastic depth);
    * ``load_weights`` (bool, default True): False when tlsearch will load a trial's checkpoint right
      after building (export, resume), so the pretrained weights need not be fetched again;
    * ``input_size`` (int): the study's ``data.image_size`` when it sets one; a backbone whose
      architecture depends on the input size (a ViT's position embeddings) must accept it.

    A trial seeds torch's generator with the study's seed just before ``build`` (and the head with
    the trial's), so weights a backbone initialises at random with torch are the same in every
    trial and the ranking: draw them from torch's generator, not from another one.
    """

    kind: ClassVar[str] = "backbone"
    family: ClassVar[str] = ""

    @abstractmethod
    def build(self, **options: Any) -> BuiltBackbone:
        """Create the feature extractor with its weights loaded. Never falls back silently to random
        weights: a missing weight file or an offline hub is an error that says how to give one."""

    def input_sizes(self) -> tuple[int, ...] | None:
        """The input sizes this backbone's architecture can take, or None (the default) for any.

        A backbone built for fixed sizes (an exported graph, a model without dynamic position
        embeddings) returns them: a study whose ``data.image_size`` (or the backbone's own
        ``image_size``) names another size is then a config error naming the backbone and these
        sizes, before any work; a study that sets no size trains at the smallest of them that is at
        least the data-derived size (:mod:`tlsearch.data.sizes`), or at the native size.

        A patch-based model (a ViT) takes any multiple of its patch size: return
        ``multiples_of(patch_size)``."""
        return None

    def describe(self) -> dict[str, Any]:
        """Cheap facts without building with weights (no download); may be empty, may not raise.

        Keys the core reads: ``params`` (parameter count) and ``gflops`` (forward GFLOPs per image
        at the default input size): ``tlsearch rank`` shows them and breaks equal scores by
        ``params``; ``family`` and ``model`` are shown. Measure on the meta device
        (``with torch.device("meta"): …``) to stay cheap."""
        return {}


#: The largest input size :func:`multiples_of` lists (far above any pretrained resolution).
LARGEST_INPUT_SIZE = 1024


def multiples_of(step: int, *, largest: int = LARGEST_INPUT_SIZE) -> tuple[int, ...]:
    """Every multiple of ``step`` up to ``largest``: what :meth:`Backbone.input_sizes` returns for
    a model that takes any size divisible by its patch size ``step``.

    >>> multiples_of(14, largest=60)
    (14, 28, 42, 56)
    """
    if step < 1:
        raise ValueError(f"a patch size is a positive whole number of pixels, not {step!r}")
    return tuple(range(step, largest + 1, step))
