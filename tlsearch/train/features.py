"""The feature cache: a frozen backbone's features, computed once and reused by every trial that can.

A trial whose backbone never trains and whose inputs are not randomly augmented trains only its
head, on the backbone's features of the (fixed) decoded images. Those features depend on:

* the backbone: its plugin name and all its hyperparameters and build options (``identity``,
  :func:`trial_backbone_identity`), its module structure (``repr``: pooling type, feature width …) and the exact
  values of its weights and buffers (a fingerprint: random or re-downloaded weights never match);
* the data: the decoded-image cache key of the train and validation sets (which covers the files,
  their contents' sizes and mtimes, and the input size and eval geometry) and the normalisation;
* the numeric precision the backbone ran in.

The key hashes all of them. Entries are two ``.npy`` files (train, val; float32, memory-mapped on
load) and a ``.json`` written last that marks the entry complete; each file is written under a
temporary name and renamed. A file lock per key makes concurrent workers compute an entry once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tlsearch.data.cache import DecodedImages
from tlsearch.data.lock import file_lock
from tlsearch.files import atomic_file
from tlsearch.preprocessing import DataConfig

FEATURE_CACHE_VERSION = 1
Features = tuple[torch.Tensor, torch.Tensor]


def weights_fingerprint(module: nn.Module) -> str:
    """A hash of every parameter and buffer of ``module``: names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def data_key(data: DecodedImages) -> str:
    """The decoded-image cache key, or for images built by hand a hash of their content."""
    if data.key:
        return data.key
    h = hashlib.sha256(str(data.images.shape).encode())
    h.update(np.ascontiguousarray(data.images).tobytes())
    return "content-" + h.hexdigest()[:24]


def backbone_identity(
    plugin: str, params: Mapping[str, Any], options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The backbone's part of the feature cache key: plugin name, hyperparameters (``weights``
    among them), build options. The image size and crop are not in it: they are in the key's
    ``data_config`` and decoded-image keys (:func:`feature_key`)."""
    return {"backbone": plugin, "params": dict(sorted(params.items())), "options": dict(options or {})}


def trial_backbone_identity(
    choices: Mapping[str, Any], options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """:func:`backbone_identity` of a trial's backbone, from its sampled choices (``backbone`` and
    its ``backbone.<name>.<param>`` entries, see ``search/sampling.py``) and the build options its
    regularizers add: trials that differ only in head, freezing or recipe share it, so a ranking's
    or an earlier trial's cached features serve them."""
    name = choices["backbone"]
    prefix = f"backbone.{name}."
    params = {
        k[len(prefix) :]: v
        for k, v in choices.items()
        if k.startswith(prefix) and "." not in k[len(prefix) :]
    }
    return backbone_identity(name, params, options)


def feature_key(
    *,
    backbone: nn.Module,
    identity: Mapping[str, Any] | None,
    data_config: DataConfig,
    train: DecodedImages,
    val: DecodedImages,
    precision: str,
) -> str:
    """The feature cache key of a backbone over a study's train and validation images."""
    payload = {
        "version": FEATURE_CACHE_VERSION,
        "identity": dict(identity) if identity is not None else None,
        "structure": repr(backbone),
        "weights": weights_fingerprint(backbone),
        "data_config": data_config.to_dict(),
        "train": data_key(train),
        "val": data_key(val),
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


class FeatureCache:
    """Backbone features on disk in a study's cache folder, shared by its trials and workers."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        stem = self.folder / f"features-{key}"
        return Path(f"{stem}-train.npy"), Path(f"{stem}-val.npy"), Path(f"{stem}.json")

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The entry's (train, val) features, memory-mapped; None when missing or incomplete."""
        train_path, val_path, meta_path = self._paths(key)
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            train = np.load(train_path, mmap_mode="r", allow_pickle=False)
            val = np.load(val_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if list(train.shape) != meta.get("train_shape") or list(val.shape) != meta.get("val_shape"):
            return None
        return train, val

    def save(self, key: str, train: np.ndarray, val: np.ndarray) -> None:
        train_path, val_path, meta_path = self._paths(key)
        for array, path in ((train, train_path), (val, val_path)):
            with atomic_file(path, binary=True) as f:
                np.save(f, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
        meta = {"train_shape": list(train.shape), "val_shape": list(val.shape)}
        with atomic_file(meta_path) as g:
            json.dump(meta, g)

    def get_or_compute(
        self, key: str, compute: Callable[[], Features], *, device: torch.device
    ) -> tuple[Features, bool]:
        """The cached features on ``device``, computing and storing them first if missing.

        Returns ``((train, val), hit)``; ``hit`` is False when this call computed them.
        """
        hit = self.load(key)
        if hit is None:
            with file_lock(self.folder / f"features-{key}.lock"):
                hit = self.load(key)  # another worker may have finished it while we waited
                if hit is None:
                    train, val = compute()
                    self.save(key, train.float().cpu().numpy(), val.float().cpu().numpy())
                    return (train.float(), val.float()), False
        return (_to_tensor(hit[0], device), _to_tensor(hit[1], device)), True


def _to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.tensor(np.asarray(array), device=device)
