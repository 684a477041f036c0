"""How an image becomes a model input. Torch-free: shared by training, export and deploy.

The same function prepares images for the training cache and for :mod:`tlsearch.deploy`, so an
exported model sees exactly the pixels it was trained and validated on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class DataConfig:
    """A backbone's preprocessing: timm's data config in a typed form.

    ``input_size`` is the square side in pixels. Eval preprocessing: resize the shorter side to
    ``round(input_size / crop_pct)`` with ``interpolation``, centre-crop ``input_size``, scale to
    [0, 1], normalise with ``mean``/``std``.
    """

    input_size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not supported; valid: {', '.join(INTERPOLATIONS)}"
            )
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1] but got {self.crop_pct}")
        if self.input_size < 8:
            raise ValueError(f"input_size must be >= 8 but got {self.input_size}")

    @property
    def resize_size(self) -> int:
        return int(round(self.input_size / self.crop_pct))

    def with_size(self, input_size: int) -> DataConfig:
        return DataConfig(input_size, self.mean, self.std, self.interpolation, self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            interpolation=str(d["interpolation"]),
            crop_pct=float(d["crop_pct"]),
        )


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB. Raises ``OSError``/``ValueError`` naming ``path`` when it is not one."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {str(path)!r}: {exc}") from None


def resize_center_crop(image: Image.Image, config: DataConfig) -> np.ndarray:
    """Eval geometry: shorter side to ``config.resize_size``, centre crop ``input_size``. Returns HWC uint8."""
    w, h = image.size
    short = config.resize_size
    if w <= h:
        new_w, new_h = short, max(short, int(round(h * short / w)))
    else:
        new_w, new_h = max(short, int(round(w * short / h))), short
    image = image.resize((new_w, new_h), INTERPOLATIONS[config.interpolation])
    s = config.input_size
    left, top = (new_w - s) // 2, (new_h - s) // 2
    image = image.crop((left, top, left + s, top + s))
    return np.asarray(image, dtype=np.uint8)


def prepare_image(path: str | Path, config: DataConfig) -> np.ndarray:
    """Decode ``path`` and apply the eval geometry: HWC uint8 of side ``config.input_size``."""
    return resize_center_crop(load_rgb(path), config)


def normalize(batch_hwc_uint8: np.ndarray, config: DataConfig) -> np.ndarray:
    """NHWC uint8 → NCHW float32 normalised, as the exported model expects."""
    x = batch_hwc_uint8.astype(np.float32) / np.float32(255.0)
    mean, std = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2))
