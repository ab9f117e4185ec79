"""Low-dimensional distributions with known answers, for checking the losses.

* Parallel lines (Arjovsky et al. 2017, Example 1): P0 = (0, Z), P_theta = (theta, Z),
  Z ~ U[0, 1]; W1(P0, P_theta) = |theta|.
* Two 1-D Gaussians N(0, 1) and N(mu, 1): W1 = |mu| (a pure shift).
* 8 Gaussians on a circle (Gulrajani et al. 2017, Sec. 4.1 / Fig. 1): radius 2,
  std 0.02, scaled by 1/1.414, as in the paper's toy code.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def parallel_lines(n: int, theta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    z = torch.rand(n, 1, generator=generator)
    return torch.cat([torch.full_like(z, theta), z], dim=1)


def shifted_gaussian(n: int, mu: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """N((mu, 0), I) in 2-D: W1 to N(0, I) is |mu|, as in 1-D.

    Two dimensions, not one: in 1-D a gradient-penalised critic can stay stuck with slope -1
    over part of the line, since every path from slope -1 to +1 crosses slope 0, which the
    penalty charges lambda (measured with the WGAN-GP test critic, 1500 steps, three
    initial seeds: estimates 1.05, 0.67 and -0.41 of W1 = 1 in 1-D; 1.07, 1.06 and 1.06 in 2-D).
    """
    x = torch.randn(n, 2, generator=generator)
    x[:, 0] += mu
    return x


EIGHT_GAUSSIAN_CENTERS = torch.tensor(
    [(2 * math.cos(k * math.pi / 4), 2 * math.sin(k * math.pi / 4)) for k in range(8)]
) / 1.414
EIGHT_GAUSSIAN_STD = 0.02 / 1.414


def eight_gaussians(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    idx = torch.randint(0, 8, (n,), generator=generator)
    return EIGHT_GAUSSIAN_CENTERS[idx] + EIGHT_GAUSSIAN_STD * torch.randn(n, 2, generator=generator)


def mlp(inputs: int, outputs: int, hidden: int = 512, layers: int = 3) -> nn.Sequential:
    """ReLU MLP as in the WGAN-GP toy experiments (3 hidden layers of 512)."""
    mods: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    mods.append(nn.Linear(width, outputs))
    return nn.Sequential(*mods)


class ToyGenerator(nn.Module):
    """With ``num_classes``, conditional: the label enters as a one-hot vector beside z."""

    def __init__(self, z_dim: int = 2, out: int = 2, hidden: int = 512, num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.net = mlp(z_dim + num_classes, out, hidden)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(_with_labels(z, labels, self.num_classes))


class ToyCritic(nn.Module):
    """With ``num_classes``, conditional on a one-hot label beside x: the gradient penalty's
    gradient is still taken w.r.t. x alone, per sample, the label held fixed. With
    ``conditioning="aux"`` the score ignores the label and the net also outputs class
    logits, returned beside it, as `wgan.dcgan.DCGANCritic` does."""

    def __init__(self, inputs: int = 2, hidden: int = 512, num_classes: int = 0, conditioning: str = "projection"):
        super().__init__()
        self.aux = bool(num_classes) and conditioning == "aux"
        self.num_classes = 0 if self.aux else num_classes  # one-hot inputs only without aux
        self.net = mlp(inputs + self.num_classes, 1 + (num_classes if self.aux else 0), hidden)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        out = self.net(_with_labels(x, labels, self.num_classes))
        return (out[:, 0], out[:, 1:]) if self.aux else out.squeeze(1)


def _with_labels(x: torch.Tensor, labels: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    if not num_classes:
        return x
    return torch.cat([x, nn.functional.one_hot(labels, num_classes).to(x.dtype)], dim=1)


def two_labelled_gaussians(n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Label 0 at (-2, 0), label 1 at (2, 0), std 0.05: a labelled set whose modes are far apart."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    return TWO_LABEL_CENTERS[labels] + 0.05 * torch.randn(n, 2, generator=generator), labels


TWO_LABEL_CENTERS = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])


def mode_coverage(samples: torch.Tensor, centers: torch.Tensor, radius: float) -> torch.Tensor:
    """Share of samples within ``radius`` of each center."""
    d = torch.cdist(samples, centers)
    return (d < radius).float().mean(0)
