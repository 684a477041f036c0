"""Choosing the device and the numeric precision of a trial."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from tlsearch.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` → the CUDA device when there is one (``CUDA_VISIBLE_DEVICES`` pins workers), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"training.device is {name!r} but CUDA is not available here; use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"training.device is {name!r} but MPS is not available here; use auto or cpu")
    return device


@dataclass(frozen=True)
class Precision:
    """A precision policy: autocast dtype (None for fp32) and whether a grad scaler is needed (fp16)."""

    name: str
    device_type: str
    dtype: torch.dtype | None

    def autocast(self) -> AbstractContextManager[object]:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        if self.dtype is torch.float16:
            return torch.amp.GradScaler(self.device_type)
        return None


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto``: bf16 autocast on CUDA devices that support it, fp16 + grad scaler on older ones,
    fp32 on the CPU (CPU autocast is slower than fp32 for most convolutions)."""
    if name == "auto":
        name = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "fp32"
    if name == "fp32":
        return Precision("fp32", device.type, None)
    if name == "bf16":
        return Precision("bf16", device.type, torch.bfloat16)
    if name == "fp16":
        if device.type == "cpu":
            raise ConfigError("training.precision fp16 needs a GPU; on the CPU use fp32 or bf16")
        return Precision("fp16", device.type, torch.float16)
    raise ConfigError(f"training.precision {name!r} is not valid; valid choices: auto, fp32, bf16, fp16")


def is_convolutional(module: torch.nn.Module) -> bool:
    """True for a convolutional network: more than one ``Conv2d`` (a ViT or Swin has exactly one,
    its patch embedding; ResNets, EfficientNets, ConvNeXts and conv-attention hybrids have many)."""
    convs = 0
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            convs += 1
            if convs > 1:
                return True
    return False


def use_channels_last(module: torch.nn.Module, device: torch.device) -> bool:
    """channels_last memory layout: on CUDA for convolutional networks (cuDNN's fast NHWC kernels
    for tensor cores), never for transformers (their only convolution is the patch embedding, and
    NHWC buys nothing there) and never on the CPU, where oneDNN picks its own layout."""
    return device.type == "cuda" and is_convolutional(module)


def configure_backends(device: torch.device) -> None:
    """Process-wide CUDA settings for training: cuDNN autotuning (fixed input sizes within a trial,
    so the search for the fastest kernels pays for itself) and TF32 matmuls for fp32 work."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
