"""How an image becomes a model input. Torch-free: shared by training, export and deploy.

The same function prepares images for the training cache and for :mod:`tlsearch.deploy`, so an
exported model sees exactly the pixels it was trained and validated on.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# Bounds on what an image file may declare in its header, checked before any pixel is decoded
# (``Image.open`` only reads the header): a few-KB PNG can declare 1 × 3,000,000 pixels, which
# passes Pillow's pixel-count check yet needs gigabytes once its shorter side is resized up.
MAX_SIDE = 20_000  # pixels, width or height
MAX_PIXELS = 80_000_000  # width × height (Pillow's own decompression-bomb limit is about 89 M)
MAX_ASPECT_RATIO = 20.0  # longer side / shorter side

# Bounds on a preprocessing (also what a deployed model's metadata may claim).
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 4096
MIN_CROP_PCT = 0.05  # crop_pct must be in (MIN_CROP_PCT, 1]
#: eval resize modes, timm's ``crop_mode`` names: ``center`` keeps the aspect ratio (shorter side to
#: the resize size, centre crop); ``squash`` resizes both sides to the resize size, then centre-crops
CROP_MODES = ("center", "squash")

# Grey modes with more than 8 bits per pixel: scaled to 8 bits, since Pillow's convert("RGB")
# clips them (a 16-bit PNG would decode all white).
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def display_path(path: str | Path) -> str:
    """``path`` as text that can always be printed, logged or written to JSON.

    File names need not be valid UTF-8 (on Linux, ``b"\\xff.png"`` is a legal name, which Python
    exposes with a lone surrogate); such bytes are shown as a backslash escape. Open files with the
    real path, never with this text.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class DataConfig:
    """A backbone's preprocessing: timm's data config in a typed form.

    ``input_size`` is the square side in pixels. Eval preprocessing: resize the shorter side
    (``crop_mode: center``, the default) or both sides (``squash``, aspect ratio not kept) to
    ``round(input_size / crop_pct)`` with ``interpolation``, centre-crop ``input_size``, scale to
    [0, 1], normalise with ``mean``/``std``. ``crop_pct: 1`` with ``squash`` is a plain resize of
    the whole image, which suits small images whose object fills the frame.
    """

    input_size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not supported; valid: {', '.join(INTERPOLATIONS)}"
            )
        if not MIN_INPUT_SIZE <= self.input_size <= MAX_INPUT_SIZE:
            raise ValueError(
                f"input_size must be in [{MIN_INPUT_SIZE}, {MAX_INPUT_SIZE}] but got {self.input_size!r}"
            )
        if not MIN_CROP_PCT < self.crop_pct <= 1:  # also False for NaN
            raise ValueError(f"crop_pct must be in ({MIN_CROP_PCT}, 1] but got {self.crop_pct!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode {self.crop_mode!r} is not supported; valid: {', '.join(CROP_MODES)}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be 3 finite numbers (R, G, B) but got {list(values)!r}")
        if not all(v > 0 for v in self.std):
            raise ValueError(f"std must be > 0 in every channel but got {list(self.std)!r}")

    @property
    def resize_size(self) -> int:
        return int(round(self.input_size / self.crop_pct))

    def with_size(self, input_size: int) -> DataConfig:
        return replace(self, input_size=input_size)

    def with_eval(self, *, crop_pct: float | None = None, crop_mode: str | None = None) -> DataConfig:
        """This preprocessing with the study's eval crop and resize mode (None keeps the backbone's)."""
        return replace(
            self,
            crop_pct=self.crop_pct if crop_pct is None else float(crop_pct),
            crop_mode=self.crop_mode if crop_mode is None else crop_mode,
        )

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
            crop_mode=str(d.get("crop_mode", "center")),  # models exported before it existed: center
        )


def check_image_size(width: int, height: int) -> None:
    """Refuse a declared size past :data:`MAX_SIDE`, :data:`MAX_PIXELS` or :data:`MAX_ASPECT_RATIO`."""
    if width < 1 or height < 1:
        raise ValueError(f"its size {width}×{height} is empty")
    if max(width, height) > MAX_SIDE:
        raise ValueError(f"its size {width}×{height} exceeds {MAX_SIDE} pixels on a side")
    if width * height > MAX_PIXELS:
        raise ValueError(f"its size {width}×{height} exceeds {MAX_PIXELS:,} pixels")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"its size {width}×{height} has an aspect ratio past {MAX_ASPECT_RATIO:g}:1 "
            "(it would need too much memory to resize)"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """A decoded image as 8-bit RGB, the way training and deploy both see it: EXIF orientation
    applied (in place; a phone photo is stored sideways with a tag saying so) and 16-bit grey
    scaled to 8 bits (Pillow's own conversion clips it, so a 16-bit PNG would be all white)."""
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode in _WIDE_GREY_MODES:
        grey = np.asarray(image, dtype=np.float64)  # 0..65535 for a 16-bit image
        image = Image.fromarray(np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB (see :func:`to_rgb`).

    Raises ``ValueError`` naming ``path`` when it is not a readable image, or when its header
    declares a size past the bounds of :func:`check_image_size` (checked before decoding pixels).
    """
    try:
        with Image.open(path) as im:
            check_image_size(*im.size)
            im.load()
            return to_rgb(im)
    except (OSError, ValueError, MemoryError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {display_path(path)!r}: {exc}") from None


def resize_center_crop(image: Image.Image, config: DataConfig) -> np.ndarray:
    """Eval geometry: shorter side (``squash``: both sides) to ``config.resize_size``, centre crop
    ``input_size``. Returns HWC uint8."""
    w, h = image.size
    short = config.resize_size
    if config.crop_mode == "squash":
        new_w = new_h = short
        # Width, then height, as two explicit passes: Pillow picks the order of its two passes by
        # itself when the sides scale differently, and the ONNX graph (width first) must match.
        image = image.resize((new_w, h), INTERPOLATIONS[config.interpolation])
    elif w <= h:
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
