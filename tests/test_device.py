"""The device and precision of a trial (:mod:`tlsearch.train.device`) and when it compiles
(:mod:`tlsearch.train.compiling`), as a study's ``training.device`` / ``training.precision`` /
``training.compile`` settings reach them. Runs on the CPU; CUDA is only named, never used.

Each test names the one-line bug it catches.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tlsearch.errors import ConfigError
from tlsearch.train import configure_backends, decide_compile, resolve_device, resolve_precision
from tlsearch.train.compiling import DEFAULT, REFERENCE, CompileProfile

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_auto_device_is_cuda_when_present_else_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bugs caught: ``auto`` picking CUDA on a machine without it, or the CPU on one with it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == CUDA
    assert resolve_device("cuda:1") == torch.device("cuda:1")


def test_an_unavailable_device_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug caught: a study asking for CUDA or MPS on a machine without it failing every trial later."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name in ("cuda", "cuda:0", "mps"):
        with pytest.raises(ConfigError, match=f"'{name}'.*use auto or cpu"):
            resolve_device(name)


def test_each_precision_autocasts_to_its_dtype_and_only_fp16_scales_gradients() -> None:
    """Bugs caught: bf16 trained in fp32 (autocast skipped); a grad scaler for bf16, or none for fp16."""
    a, b = torch.ones(2, 2), torch.ones(2, 2)
    fp32, bf16 = resolve_precision("fp32", CPU), resolve_precision("bf16", CPU)
    assert (fp32.name, fp32.dtype, fp32.grad_scaler()) == ("fp32", None, None)
    with fp32.autocast():
        assert (a @ b).dtype is torch.float32
    assert (bf16.name, bf16.dtype, bf16.grad_scaler()) == ("bf16", torch.bfloat16, None)
    with bf16.autocast():
        assert (a @ b).dtype is torch.bfloat16
    fp16 = resolve_precision("fp16", CUDA)
    with pytest.warns(UserWarning):  # no CUDA here: the scaler says it is disabled, but it exists
        assert isinstance(fp16.grad_scaler(), torch.amp.GradScaler)
    with pytest.raises(ConfigError, match="'fp8'.*auto, fp32, bf16, fp16"):
        resolve_precision("fp8", CPU)


@pytest.fixture
def backend_flags() -> Iterator[None]:
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    yield
    (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    ) = saved


def test_cuda_training_turns_on_cudnn_autotuning_and_tf32_and_the_cpu_changes_nothing(
    backend_flags: None,
) -> None:
    """Bugs caught: a CUDA trial without cuDNN benchmark or TF32 (slower); a CPU trial changing them."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    configure_backends(CPU)
    assert not (
        torch.backends.cudnn.benchmark
        or torch.backends.cuda.matmul.allow_tf32
        or torch.backends.cudnn.allow_tf32
    )
    configure_backends(CUDA)
    assert torch.backends.cudnn.benchmark
    assert torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32


def test_a_profile_that_never_gains_never_compiles_and_a_given_profile_wins() -> None:
    """Bugs caught: equal eager and compiled rates dividing by zero; an explicit profile ignored."""
    assert CompileProfile(1000, 1000, 10).break_even_images() == float("inf")
    assert CompileProfile(1000, 2000, 10).break_even_images() == pytest.approx(20_000)
    fast = CompileProfile(1000, 2000, 10)  # break-even 20,000 images: compile from 40,000

    def decide(images: int) -> bool:
        return decide_compile(
            mode="auto", device=CUDA, expected_images=images, model_name="resnet50", profile=fast
        ).compile

    assert decide(40_000) and not decide(39_999)


def test_the_reference_profiles_give_the_break_even_points_the_docs_state() -> None:
    """Bug caught: a figure of the measured table mistyped, so ``compile: auto`` decides on the wrong
    break-even (the table in :mod:`tlsearch.train.compiling` and docs quote these points)."""
    points = {name: profile.break_even_images() for name, profile in REFERENCE.items()}
    assert points["efficientnet_lite0"] == float("inf")  # compiled is slower: never
    assert points["resnet50"] == pytest.approx(1.15e6, rel=5e-3)
    assert points["convnext_tiny"] == pytest.approx(0.308e6, rel=5e-3)
    assert points["vit_small_patch16_224"] == pytest.approx(0.364e6, rel=5e-3)
    assert DEFAULT.break_even_images() == pytest.approx(0.578e6, rel=5e-3)
