"""Turning generator output into pictures: uint8 conversion, grids, latent interpolations."""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.utils import make_grid


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """NCHW floats in [-1, 1] -> NHWC uint8, the inverse of the reader's x / 127.5 - 1."""
    x = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def grid(images_uint8: np.ndarray, nrow: int | None = None) -> np.ndarray:
    """NHWC uint8 -> one HWC uint8 picture, ``nrow`` images per row (default: square)."""
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2)
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    g = make_grid(x, nrow=nrow, padding=2, pad_value=255)
    g = g.permute(1, 2, 0).numpy()
    if images_uint8.shape[-1] == 1:
        g = g[..., :1]
    return g


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents: Gaussian latents concentrate on a
    shell, and slerp stays on it where a straight line cuts through the low-density
    middle (White 2016, "Sampling Generative Networks")."""
    a_n, b_n = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    t = t.view(-1, 1)
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


def interpolation_latents(z_dim: int, rows: int, steps: int, seed: int) -> torch.Tensor:
    """``rows`` interpolation paths of ``steps`` latents each, shape (rows*steps, z_dim)."""
    g = torch.Generator().manual_seed(seed)
    ends = torch.randn(rows, 2, z_dim, generator=g)
    t = torch.linspace(0, 1, steps)
    return torch.cat([slerp(ends[r, 0].expand(steps, -1), ends[r, 1].expand(steps, -1), t) for r in range(rows)])
