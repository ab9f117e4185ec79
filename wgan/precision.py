"""Numeric precision of the training step: bf16 autocast where the hardware has it.

bf16 keeps fp32's exponent range, so unlike fp16 it needs no loss scaling, and the
gradient penalty's double backward cannot underflow into NaNs the way fp16's does.
Only the networks' forward passes are autocast; losses, the penalty's gradient
norm and the optimizer state stay fp32 (see `wgan.step`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def cpu_has_bf16() -> bool:
    """True when this CPU has bf16 arithmetic (avx512_bf16 or AMX); without it bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def effective(requested: str, device: torch.device) -> str:
    """The precision a step on ``device`` runs at: ``auto`` becomes bf16 where the hardware has it."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    """A context that runs the forward passes at ``precision`` (an effective one, not auto)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
