"""Differentiable augmentation of every image the critic sees (DiffAugment: Zhao et al. 2020,
"Differentiable Augmentation for Data-Efficient GAN Training").

With ``--augment diffaug`` the critic is trained and queried as D(T(x)) for real and generated
images alike, in the critic update and in the generator update ("substituting every D(x) with
D(T(x))", the authors' README). T is differentiable, so the generator's gradient flows through
it. Each call draws new parameters per sample from this process's torch RNG: on Ray Train every
worker augments its own shard with its own draws, DDP averages the gradients, and the replicas'
weights stay equal (tests/test_distributed.py).

The ops, with the ranges of Zhao et al. 2020 (Sec. 3 and their DiffAugment_pytorch.py):

* ``color``: brightness + U(-0.5, 0.5); saturation, each pixel's deviation from its channel mean
  times U(0, 2) (a no-op on one channel); contrast, the deviation from the image mean times
  U(0.5, 1.5).
* ``translation``: a shift by a whole number of pixels, up to 1/8 of the side each way, filled
  with zeros.
* ``cutout``: a square of half the side set to zero, centred on a uniformly drawn pixel (cut off
  at the border).

The policy ``diffaug`` is color, translation and cutout, the authors' recommendation for small
datasets ("we recommend using the strongest Color + Translation + Cutout", README); ``diffaug:OPS``
applies the ops named, in that order (parsed and checked by `wgan.config.augment_policy`).

**Gradient penalty** (wgan-gp): taken at interpolates between the *augmented* real and the
*augmented* fake batch, the critic scoring them without a further draw (`wgan.step`). The
penalty constrains the gradient of the function the critic loss trains, D, on lines between
samples of the two distributions it compares, which with DiffAugment are T(P_r) and T(P_g).
Penalising D(T(x_hat)) with respect to x_hat instead would fold T's Jacobian into the norm
(cutout zeroes a quarter of it, saturation scales it by up to 2), so the constraint would change
with each draw. The authors' StyleGAN2 CIFAR-10 code takes its R1 penalty the same way, at the
augmented reals (DiffAugment-stylegan2/training/loss.py, ``ns_r1_DiffAugment``, run_cifar.py's loss).
"""

from __future__ import annotations

import torch


def augment(x: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    """T(x) for a batch of NCHW images: the ops of ``policy`` (`wgan.config.augment_policy`) in order,
    drawn per sample."""
    for op in policy:
        x = _OPS[op](x)
    return x


def _per_sample(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """U(low, high), one value per sample, shaped to broadcast over C, H, W."""
    return low + (high - low) * torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)


def _color(x: torch.Tensor) -> torch.Tensor:
    x = x + _per_sample(x, -0.5, 0.5)  # brightness
    gray = x.mean(dim=1, keepdim=True)
    x = gray + (x - gray) * _per_sample(x, 0.0, 2.0)  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * _per_sample(x, 0.5, 1.5)  # contrast


def _shifted(x: torch.Tensor, offset: torch.Tensor, dim: int) -> torch.Tensor:
    """Each sample's content moved by ``offset[i]`` pixels along ``dim`` (2: down, 3: right), zeros coming in."""
    size = x.shape[dim]
    source = torch.arange(size, device=x.device) - offset.view(-1, 1)  # output pixel j reads pixel j - offset
    inside = (source >= 0) & (source < size)
    shape = [x.shape[0], 1, 1, 1]
    shape[dim] = size
    index = source.clamp(0, size - 1).view(shape).expand(x.shape)
    return x.gather(dim, index) * inside.view(shape).to(x.dtype)


def _translation(x: torch.Tensor) -> torch.Tensor:
    for dim in (2, 3):
        reach = x.shape[dim] // 8
        x = _shifted(x, torch.randint(-reach, reach + 1, (x.shape[0],), device=x.device), dim)
    return x


def _cutout(x: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    side_h, side_w = h // 2, w // 2
    top = torch.randint(0, h, (n, 1, 1), device=x.device) - side_h // 2
    left = torch.randint(0, w, (n, 1, 1), device=x.device) - side_w // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)
    return x * (~hole).unsqueeze(1).to(x.dtype)


_OPS = {"color": _color, "translation": _translation, "cutout": _cutout}  # every one of AUGMENT_OPS
