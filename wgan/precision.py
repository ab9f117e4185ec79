"""Numeric precision of the training step: bf16 autocast where the hardware has it, fp16 on GPUs.

bf16 keeps fp32's exponent range, so it needs no loss scaling. fp16 has a 5-bit
exponent: gradients below about 6e-8 flush to zero, so its backward passes run on a
loss multiplied by a dynamic scale (`torch.amp.GradScaler`), the penalty's inner
gradient included (see `wgan.losses.gradient_penalty`). Only the networks' forward
passes are autocast; losses, the penalty's gradient norm and the optimizer state
stay fp32 (see `wgan.step`).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True when this CPU has bf16 arithmetic (avx512_bf16 or AMX); without it bf16 is emulated and slower.
    ``cpuinfo``: the text of /proc/cpuinfo (default: this machine's)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = cpuinfo.split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def effective(requested: str, device: torch.device) -> str:
    """The precision a step on ``device`` runs at: ``auto`` becomes bf16 where the hardware has it."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def memory_format(precision: str, device: torch.device) -> torch.memory_format:
    """The layout the networks and batches of a step at ``precision`` (an effective one) run fastest in.

    channels_last (NHWC) for bf16 on a CPU, whose oneDNN bf16 convolutions take that layout: with
    NCHW each convolution reorders its input and output (measured on an avx512_bf16 CPU without AMX:
    bf16 1.74x the fp32 plain loop at 64 px, 1.84x in channels_last; 1.60x and 1.59x at 32 px;
    1.38x and 1.35x at 28 px with one channel, benchmarks/RESULTS-issue32.md), and for bf16/fp16 on a GPU, whose tensor-core convolutions are
    NHWC (PyTorch's channels_last tutorial; NVIDIA's cuDNN guide). PyTorch's default NCHW for fp32,
    where channels_last measured 0.94-1.05x.
    """
    if precision in DTYPES and device.type in ("cpu", "cuda"):
        return torch.channels_last
    return torch.contiguous_format


def autocast(precision: str, device: torch.device):
    """A context that runs the forward passes at ``precision`` (an effective one, not auto)."""
    if precision in DTYPES:
        return torch.autocast(device.type, dtype=DTYPES[precision])
    return contextlib.nullcontext()


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A dynamic loss scaler for fp16; for bf16 and fp32 a disabled one, which passes
    losses and optimizer steps through unchanged."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


# fp16: the loss scaler skips a step whose gradients overflowed and halves its scale, so
# a skipped step's losses may be infinite without harm. 16 skips in a row take the scale
# from its initial 2^16 below 1, which only a diverged run does.
MIN_LOSS_SCALE = 1.0


def without_skipped_steps(history: list[tuple[int, dict[str, float]]]) -> list[tuple[int, dict[str, float]]]:
    """An fp16 run's history without the non-finite values of steps the loss scaler skipped."""
    return [(step, {k: v for k, v in values.items() if math.isfinite(v)}
             if values.get("amp/loss_scale", 0.0) >= MIN_LOSS_SCALE else values)
            for step, values in history]
