"""DCGAN (Radford, Metz, Chintala 2016): transposed-convolution generator with batch norm and ReLU,
strided-convolution critic with LeakyReLU(0.2); the architecture family that both WGAN papers
train on images."""

from __future__ import annotations

import torch
from torch import nn

from wgan.layers import ScoringCritic, base_and_doublings, critic_norm


class DCGANGenerator(nn.Module):
    def __init__(self, z_dim: int, channels: int, image_size: int, width: int, num_classes: int = 0):
        super().__init__()
        base, doublings = base_and_doublings(image_size)
        top = width * 2 ** (doublings - 1)
        self.z_dim, self.num_classes = z_dim, num_classes
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        self.project = nn.Sequential(
            nn.Linear(z_dim, top * base * base, bias=False),
            nn.Unflatten(1, (top, base, base)),
            nn.BatchNorm2d(top),
            nn.ReLU(True),
        )
        layers: list[nn.Module] = []
        ch = top
        for _ in range(doublings - 1):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = z * self.embed(labels)
        return self.body(self.project(z))


class DCGANCritic(ScoringCritic):
    """Strided convolutions, LeakyReLU(0.2); the score and conditioning of `ScoringCritic`."""

    def __init__(self, channels: int, image_size: int, width: int, norm: str, num_classes: int = 0,
                 conditioning: str = "projection"):
        super().__init__()
        base, doublings = base_and_doublings(image_size)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(doublings - 1):
            layers += [
                nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=norm in ("none", "spectral")),  # no norm layer's shift follows
                critic_norm(norm, ch * 2),
                nn.LeakyReLU(0.2, True),
            ]
            ch *= 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self._heads(ch * base * base, num_classes, conditioning)
