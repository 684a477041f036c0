"""When to ``torch.compile`` a trial: only when the trial is long enough to repay the warm-up.

Compiling costs a fixed warm-up (tracing + Inductor codegen + autotuning) and then saves a fixed time
per image. It pays when ``expected_images × (1/eager_rate − 1/compiled_rate) > warm_up``; tlsearch
asks for a margin of 2× (``MARGIN``) because a pruner may stop a trial early and the warm-up is paid
again for every evaluation-mode graph and every change of which parameters train.

The figures come from the issue's reference measurements (H100, torch 2.11, timm 1.0.29, 224 px,
batch 128, bf16 + channels_last, train step = fwd + bwd + SGD):

=======================  ============  ==============  =======  ==================
model                    eager img/s   compiled img/s  warm-up  break-even images
=======================  ============  ==============  =======  ==================
efficientnet_lite0       5,233         4,383           51 s     never (slower)
resnet50                 3,722         4,423           49 s     ≈ 1.15 M
convnext_tiny            2,570         3,809           39 s     ≈ 0.31 M
vit_small_patch16_224    4,193         5,703           23 s     ≈ 0.36 M
=======================  ============  ==============  =======  ==================

A model not in the table uses ``DEFAULT``: the median gain of the table's models that gained
(1.36×), the slowest warm-up (51 s) and a typical eager rate of 3,000 img/s, i.e. break-even at
≈ 0.58 M images and compilation from ≈ 1.2 M expected training images (about 9,000 steps at batch
128). A typical search trial (a few epochs over a few thousand images) is far below: it never
compiles. The rule applies to CUDA only; on the CPU and MPS, trials never compile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COMPILE_MODES = ("auto", "always", "never")
MARGIN = 2.0


@dataclass(frozen=True)
class CompileProfile:
    """Measured throughput with and without compilation, and the compile warm-up, for one model."""

    eager_rate: float  # images/s
    compiled_rate: float  # images/s
    warm_up_s: float

    def break_even_images(self) -> float:
        """Training images after which compiling has paid its warm-up (inf when it never does)."""
        saving = 1.0 / self.eager_rate - 1.0 / self.compiled_rate
        return self.warm_up_s / saving if saving > 0 else float("inf")


REFERENCE: dict[str, CompileProfile] = {
    "efficientnet_lite0": CompileProfile(5233, 4383, 51),
    "resnet50": CompileProfile(3722, 4423, 49),
    "convnext_tiny": CompileProfile(2570, 3809, 39),
    "vit_small_patch16_224": CompileProfile(4193, 5703, 23),
}
DEFAULT = CompileProfile(3000, 3000 * 1.36, 51)


@dataclass(frozen=True)
class CompileDecision:
    compile: bool
    reason: str


def decide_compile(
    *,
    mode: str,
    device: torch.device,
    expected_images: int,
    model_name: str | None = None,
    profile: CompileProfile | None = None,
) -> CompileDecision:
    """Whether a trial compiles its model (see the module docstring for the rule and its figures).

    ``expected_images`` = training steps × batch size for the whole trial; ``model_name`` picks a
    measured profile from :data:`REFERENCE` (else :data:`DEFAULT`); ``profile`` overrides both.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} is not valid; valid choices: {', '.join(COMPILE_MODES)}")
    if mode == "never":
        return CompileDecision(False, "compile: never")
    if mode == "always":
        return CompileDecision(True, "compile: always")
    if device.type != "cuda":
        return CompileDecision(False, f"no compilation on {device.type}")
    chosen = profile or REFERENCE.get(model_name or "", DEFAULT)
    need = MARGIN * chosen.break_even_images()
    if expected_images >= need:
        return CompileDecision(True, f"{expected_images} training images ≥ {need:.0f} (2× break-even)")
    return CompileDecision(
        False, f"{expected_images} training images < {need:.0f} (2× break-even); too short"
    )
