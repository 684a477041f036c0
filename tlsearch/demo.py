"""A small labelled image set made on the spot: no download, deterministic, and not trivially easy.

Four classes of shapes (circle, square, triangle, star) drawn with random colour, size, position,
rotation and outline on noisy gradient backgrounds, so a class is told apart by shape, not by colour.
Used by the quickstart study, the tests and the benchmarks. :func:`make_multilabel_shapes` draws
several shapes per image for the multi-label task.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star")


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = 4
        radii = [r] * corners
    elif shape == "triangle":
        corners = 3
        radii = [r * 1.15] * corners
    else:  # star
        corners = 10
        radii = [r * (1.0 if i % 2 == 0 else 0.45) for i in range(corners)]
    return [
        (
            cx + radii[i] * math.cos(angle + 2 * math.pi * i / corners),
            cy + radii[i] * math.sin(angle + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def draw_shape(shape: str, *, size: int, rng: random.Random) -> Image.Image:
    """One image of ``shape`` (one of :data:`SHAPES`)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
    c0 = [rng.randint(0, 255) for _ in range(3)]
    c1 = [rng.randint(0, 255) for _ in range(3)]
    image = Image.linear_gradient("L").resize((size, size)).rotate(rng.uniform(0, 360))
    image = Image.merge(
        "RGB", [image.point(lambda v, a=a, b=b: a + (b - a) * v // 255) for a, b in zip(c0, c1, strict=False)]
    )
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(0, 3)):  # clutter: thin random lines
        draw.line(
            [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(2)],
            fill=tuple(rng.randint(0, 255) for _ in range(3)),
            width=1,
        )
    r = rng.uniform(0.18, 0.34) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    _draw_into(draw, shape, box=(cx, cy, r), rng=rng)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    noise = Image.effect_noise((size, size), rng.uniform(5, 25)).convert("RGB")
    return Image.blend(image, noise, 0.12)


def make_shapes(
    root: str | Path,
    *,
    per_class: int = 80,
    val_per_class: int = 20,
    size: int = 64,
    seed: int = 0,
    classes: tuple[str, ...] = SHAPES,
) -> Path:
    """Write ``root/train/<shape>/*.png`` and ``root/val/<shape>/*.png``; returns ``root``."""
    root = Path(root)
    rng = random.Random(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for shape in classes:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_shape(shape, size=size, rng=rng).save(folder / f"{shape}_{i:04d}.png")
    return root


def make_sizes(root: str | Path, *, n: int = 200, size: int = 64, seed: int = 0) -> Path:
    """A regression set: shapes of random kind and colour whose target is their size.

    Writes ``root/images/*.png`` and ``root/labels.csv`` (``path,size``, size as a fraction of the
    image side); returns the CSV's path.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = ["path,size"]
    for i in range(n):
        image = Image.new("RGB", (size, size), tuple(rng.randint(0, 255) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        fraction = rng.uniform(0.1, 0.45)
        r = fraction * size
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        shape = rng.choice(SHAPES)
        fill = tuple(rng.randint(0, 255) for _ in range(3))
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=fill)
        name = f"images/{i:05d}.png"
        image.save(root / name)
        rows.append(f"{name},{fraction:.5f}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


#: the chance that each shape appears in an image of :func:`make_multilabel_shapes`: ``star`` is rare
MULTILABEL_RATES = {"circle": 0.5, "square": 0.45, "triangle": 0.35, "star": 0.12}


def _draw_into(
    draw: ImageDraw.ImageDraw, shape: str, *, box: tuple[float, float, float], rng: random.Random
) -> None:
    cx, cy, r = box
    fill = tuple(rng.randint(0, 255) for _ in range(3))
    outline = tuple(rng.randint(0, 255) for _ in range(3))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=2)
    else:
        draw.polygon(
            _polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=fill, outline=outline, width=2
        )


def make_multilabel_shapes(
    root: str | Path,
    *,
    n: int = 200,
    size: int = 64,
    seed: int = 0,
    rates: dict[str, float] | None = None,
    name: str = "labels.csv",
) -> Path:
    """A multi-label set: each image holds each shape with its own chance (``rates``, default
    :data:`MULTILABEL_RATES`, a rare ``star``), one per quadrant-sized cell, on a noisy gradient;
    an image may hold none ("none of these" is a real answer in multi-label data).

    Writes ``root/images/*.png`` and ``root/<name>`` (``path,labels``, labels separated by ``|``);
    returns the CSV's path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rates = dict(MULTILABEL_RATES if rates is None else rates)
    rows = ["path,labels"]
    cells = [(0, 0), (1, 0), (0, 1), (1, 1)]
    for i in range(n):
        present = [shape for shape, p in rates.items() if rng.random() < p]
        c0 = [rng.randint(0, 255) for _ in range(3)]
        c1 = [rng.randint(0, 255) for _ in range(3)]
        image = Image.linear_gradient("L").resize((size, size)).rotate(rng.uniform(0, 360))
        image = Image.merge(
            "RGB",
            [image.point(lambda v, a=a, b=b: a + (b - a) * v // 255) for a, b in zip(c0, c1, strict=False)],
        )
        draw = ImageDraw.Draw(image)
        places = rng.sample(cells, len(present)) if len(present) <= len(cells) else cells
        half = size / 2
        for shape, (gx, gy) in zip(present, places, strict=False):
            r = rng.uniform(0.28, 0.42) * half
            cx = gx * half + rng.uniform(r, half - r)
            cy = gy * half + rng.uniform(r, half - r)
            _draw_into(draw, shape, box=(cx, cy, r), rng=rng)
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.6)))
        noise = Image.effect_noise((size, size), rng.uniform(5, 20)).convert("RGB")
        file = f"images/{i:05d}.png"
        Image.blend(image, noise, 0.1).save(root / file)
        rows.append(f"{file},{'|'.join(present)}")
    csv = root / name
    csv.write_text("\n".join(rows) + "\n")
    return csv
