"""``small_cnn``: a backbone plugin of the example package — a small convolutional network that
honours ``weights:`` (``random``, or a file; a relative path is from the study file's folder).

What every backbone does, in a few lines each: declare its hyperparameters (``width``,
``weights``); check a weights file once, before any trial (:meth:`SmallCNNBackbone.check_space`);
build the module with its pooled-feature width, its preprocessing (:class:`DataConfig`), its
ordered layer groups and its ``info`` (:meth:`SmallCNNBackbone.build`); report its cost without
building weights (:meth:`SmallCNNBackbone.describe`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlsearch.errors import PluginError
from tlsearch.kinds import Backbone, BuiltBackbone
from tlsearch.preprocessing import DataConfig
from tlsearch.space import Categorical, Fixed, Hyperparameter

STAGES = ("stem", "stage1", "stage2")  # the layer groups, input → output
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")
WEIGHTS_FORMS = "random, or a .safetensors/.pth/.pt file (a relative path is from the study file's folder)"
NATIVE_SIZE = 32  # the input size it is designed for; a study's data.image_size overrides it


class SmallCNN(nn.Module):
    """stem (3×3 conv, BN, ReLU) → stage1 (stride 2, ×2 channels) → stage2 (stride 2, ×2) → global average pool."""

    def __init__(self, width: int) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
            )

        self.stem = block(3, width, 1)
        self.stage1 = block(width, 2 * width, 2)
        self.stage2 = block(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW images → pooled features ``(N, 4·width)`` (what a backbone module must return)."""
        return self.pool(self.stage2(self.stage1(self.stem(x)))).flatten(1)


def gflops(width: int, input_size: int) -> float:
    """Forward GFLOPs per image (a multiply-add counts 2) of the three convolutions."""
    total, size, cin = 0, input_size, 3
    for cout, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
        size = (size - 1) // stride + 1  # 3×3, padding 1
        total += 2 * 9 * cin * cout * size * size
        cin = cout
    return total / 1e9


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, loaded safely: safetensors, or ``torch.load(weights_only=True)``
    (a pickle that would run code is refused)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PluginError(f"small_cnn: weights file {str(path)!r} cannot be loaded safely: {exc}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PluginError(f"small_cnn: weights file {str(path)!r} does not hold a state dict of tensors")
    return dict(state)


def _values(hp: Hyperparameter | None) -> list[Any]:
    """Every value a narrowed hyperparameter may take (a fixed value, or the choices)."""
    if isinstance(hp, Categorical):
        return list(hp.choices)
    return [] if hp is None else [hp.default]


class SmallCNNBackbone(Backbone):
    """A small three-stage CNN with BatchNorm, from random weights or a local weights file.

    An example of a third-party backbone: ``weights`` is ``random`` (the default: there is no hub
    for it) or a ``.safetensors``/``.pth`` file of a :class:`SmallCNN` state dict, checked once
    before any trial (exists, loads safely, fits every ``width`` the study may pick); a relative
    path is from the study file's folder. Layer groups: ``stem``, ``stage1``, ``stage2``.
    Build options: ``load_weights=False`` skips the file (a checkpoint is loaded next);
    ``input_size`` needs nothing (global pooling takes any size); ``drop_path_rate`` is not
    supported (no residual blocks) and ``info["drop_path_rate"]`` says so.
    Source: the VGG-style stack of 3×3 convolutions (Simonyan & Zisserman, ICLR 2015) with
    BatchNorm (Ioffe & Szegedy, ICML 2015).
    """

    name = "small_cnn"
    family = "example"
    hyperparameters = {
        "width": Categorical((8, 16, 32), default=16, help="channels of the stem (×2 per stage)"),
        "weights": Fixed("random", help=WEIGHTS_FORMS),
    }
    width: int
    weights: str

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.width not in (8, 16, 32):
            raise ValueError(f"small_cnn: width must be one of 8, 16, 32 but got {self.width!r}")

    @classmethod
    def check_space(
        cls, space: Mapping[str, Hyperparameter], *, study_dir: Path | None
    ) -> dict[str, Hyperparameter]:
        """Each ``weights`` file the study names: made absolute from ``study_dir``, loaded once and
        matched tensor by tensor against every ``width`` the study may pick. ``hub`` (or any other
        word) is refused with the valid forms."""
        widths = [int(w) for w in _values(space.get("width"))]

        def checked(value: Any) -> str:
            if value == "random":
                return value
            if not isinstance(value, str) or Path(value).suffix not in WEIGHT_SUFFIXES:
                raise PluginError(f"small_cnn: weights {value!r} is not valid; valid: {WEIGHTS_FORMS}")
            path = Path(value).expanduser()
            if not path.is_absolute() and study_dir is not None:
                path = study_dir / path
            if not path.is_file():
                raise PluginError(
                    f"small_cnn: weights file {value!r} does not exist (looked for {str(path)!r}; "
                    "a relative path is from the study file's folder)"
                )
            state = load_weights_file(path)
            for width in widths:
                with torch.device("meta"):
                    expected = SmallCNN(width).state_dict()
                wrong = sorted(
                    k for k in expected.keys() | state.keys() if k not in state or k not in expected
                ) or [k for k in expected if state[k].shape != expected[k].shape]
                if wrong:
                    raise PluginError(
                        f"small_cnn: weights file {str(path)!r} does not fit width {width}: "
                        f"tensors missing, unexpected or of another shape: {wrong[:4]}"
                    )
            return str(path.resolve())

        out = dict(space)
        hp = out.get("weights")
        if isinstance(hp, Categorical):
            choices = tuple(checked(v) for v in hp.choices)
            default = choices[hp.choices.index(hp.default)] if hp.default in hp.choices else None
            out["weights"] = Categorical(choices, default=default, help=hp.help)
        elif hp is not None:
            out["weights"] = Fixed(checked(hp.default), help=hp.help)
        return out

    def build(self, **options: Any) -> BuiltBackbone:
        module = SmallCNN(self.width)  # drawn from torch's generator, which the trial seeds
        if options.get("load_weights", True) and self.weights != "random":
            module.load_state_dict(load_weights_file(Path(self.weights)), strict=True)
        size = int(options.get("input_size") or NATIVE_SIZE)
        return BuiltBackbone(
            module=module,
            num_features=module.num_features,
            data_config=DataConfig(
                input_size=NATIVE_SIZE,
                mean=(0.5, 0.5, 0.5),
                std=(0.25, 0.25, 0.25),
                interpolation="bilinear",
                crop_pct=1.0,  # small images whose object fills the frame: resize the whole image
                crop_mode="squash",
            ),
            layer_groups=[[f"{s}.{n}" for n, _ in getattr(module, s).named_parameters()] for s in STAGES],
            info={
                "family": self.family,
                "model": f"small_cnn_w{self.width}",
                "weights": self.weights,
                "params": sum(p.numel() for p in module.parameters()),
                "gflops": gflops(self.width, size),
                "input_size": size,
                "drop_path_rate": "unsupported" if options.get("drop_path_rate") else 0.0,
            },
        )

    def describe(self) -> dict[str, Any]:
        """Parameter count (on the meta device: nothing allocated) and GFLOPs at the native size."""
        with torch.device("meta"):
            params = sum(p.numel() for p in SmallCNN(self.width).parameters())
        return {
            "family": self.family,
            "model": f"small_cnn_w{self.width}",
            "params": params,
            "gflops": gflops(self.width, NATIVE_SIZE),
        }
