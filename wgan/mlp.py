"""The 4-layer, 512-unit ReLU MLP generator of Arjovsky et al. 2017 (Sec. 4.3, Fig. 6), used there
to show that WGAN trains without batch norm. Its critic is the DCGAN critic, as in the paper."""

from __future__ import annotations

import torch
from torch import nn


class MLPGenerator(nn.Module):
    """Four ReLU layers of 512 units (Arjovsky et al. 2017, Sec. 4.3)."""

    def __init__(self, z_dim: int, channels: int, image_size: int, width: int = 512, num_classes: int = 0):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        out = channels * image_size * image_size
        self.body = nn.Sequential(
            nn.Linear(z_dim, width), nn.ReLU(True),
            nn.Linear(width, width), nn.ReLU(True),
            nn.Linear(width, width), nn.ReLU(True),
            nn.Linear(width, width), nn.ReLU(True),
            nn.Linear(width, out), nn.Tanh(),
            nn.Unflatten(1, (channels, image_size, image_size)),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = z * self.embed(labels)
        return self.body(z)
