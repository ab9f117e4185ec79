"""The WGAN-GP paper's CIFAR-10 ResNet (Gulrajani et al. 2017, Appendix; the authors'
gan_cifar_resnet.py, igul222/improved_wgan_training).

* Generator: linear z -> DIM_G x 4 x 4; three residual blocks that upsample (batch norm, ReLU,
  nearest-neighbour x2, 3x3 conv, batch norm, ReLU, 3x3 conv; shortcut: x2 and a 1x1 conv);
  batch norm, ReLU, a 3x3 conv to the image channels, tanh.
* Critic: an optimised first block (3x3 conv, ReLU, 3x3 conv, 2x2 mean pool; shortcut: mean pool
  then a 1x1 conv), a downsampling block (norm, ReLU, 3x3 conv, norm, ReLU, 3x3 conv, mean pool;
  shortcut: 1x1 conv then mean pool), two blocks at that size (identity shortcut), ReLU, global
  mean pool, linear.

The code's numbers: DIM_G = DIM_D = 128 (our ``--width``, whose default for resnet is 128:
`wgan.config.ARCH_WIDTHS`), NORMALIZATION_G = True (batch norm in the generator),
NORMALIZATION_D = False (none in the critic; here ``--critic-norm``: none, layer norm over
(C, H, W) as the code's Layernorm, batch norm where the loss allows it, or spectral
normalisation, applied to every critic layer by `wgan.networks.build_critic`). Weights keep
PyTorch's default initialisation.

Sizes: 32 px is the paper's (4x4 base, three upsamplings). Other sizes start from the DCGAN
networks' base (`wgan.layers.base_and_doublings`): 28 px 7x7 and two upsamplings, 48 px 6x6
and three, 64 px 4x4 and four, 96 px 6x6 and four. The critic halves until its feature map is
at most 8 px, as the paper's (32 -> 16 -> 8): one downsampling block per halving after the
optimised block (28 -> 14 -> 7; 48 -> 24 -> 12 -> 6; 64 -> 32 -> 16 -> 8; 96 -> ... -> 6),
then the two blocks at that size.

Conditioning follows the DCGAN networks, so both architectures train and sample alike: the
generator multiplies z by a label embedding (the authors' code used conditional batch norm),
and the critic is a projection critic (Miyato and Koyama 2018) or, with ``conditioning="aux"``,
scores without the label and classifies with a second head, returning ``(score, logits)``
(the authors' ACGAN head, Odena et al. 2017).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wgan.layers import ScoringCritic, base_and_doublings, critic_norm

# The critic's feature map side it stops halving at (the paper's 32 px critic ends at 8 x 8).
_CRITIC_MAX_SIDE = 8
_BLOCKS_AT_FINAL_SIZE = 2  # Discriminator.3 and .4 of gan_cifar_resnet.py


def _conv3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class _UpBlock(nn.Module):
    """ResidualBlock(resample='up') of the generator."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(c_in), _conv3(c_in, c_out)
        self.norm2, self.conv2 = nn.BatchNorm2d(c_out), _conv3(c_out, c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.interpolate(F.relu(self.norm1(x)), scale_factor=2, mode="nearest"))
        h = self.conv2(F.relu(self.norm2(h)))
        return self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest")) + h


class _CriticBlock(nn.Module):
    """ResidualBlock(resample='down' or None) of the critic: pre-activation, mean pool after the second conv."""

    def __init__(self, c_in: int, c_out: int, norm: str, down: bool):
        super().__init__()
        self.down = down
        self.norm1, self.conv1 = critic_norm(norm, c_in), _conv3(c_in, c_in if down else c_out)
        self.norm2, self.conv2 = critic_norm(norm, c_in if down else c_out), _conv3(c_in if down else c_out, c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if down or c_in != c_out else nn.Identity()

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        h = self._pool(self.conv2(F.relu(self.norm2(h))))
        return self._pool(self.shortcut(x)) + h


class _OptimizedBlock(nn.Module):
    """OptimizedResBlockDisc1: the critic's first block, on the image itself (no norm, no activation before)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1, self.conv2 = _conv3(c_in, c_out), _conv3(c_out, c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(x))), 2)
        return self.shortcut(F.avg_pool2d(x, 2)) + h


class ResNetGenerator(nn.Module):
    def __init__(self, z_dim: int, channels: int, image_size: int, width: int, num_classes: int = 0):
        super().__init__()
        base, ups = base_and_doublings(image_size)
        self.z_dim, self.num_classes = z_dim, num_classes
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        self.project = nn.Sequential(nn.Linear(z_dim, width * base * base), nn.Unflatten(1, (width, base, base)))
        self.blocks = nn.Sequential(*[_UpBlock(width, width) for _ in range(ups)])
        self.out = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), _conv3(width, channels), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = z * self.embed(labels)
        return self.out(self.blocks(self.project(z)))


def critic_halvings(image_size: int) -> int:
    """How often the critic halves an image of this side: until it is at most 8 px."""
    halvings, side = 0, image_size
    while side > _CRITIC_MAX_SIDE:
        side, halvings = side // 2, halvings + 1
    return halvings


class ResNetCritic(ScoringCritic):
    """The residual critic; its score and conditioning are `wgan.layers.ScoringCritic`'s, as the DCGAN critic's."""

    def __init__(self, channels: int, image_size: int, width: int, norm: str, num_classes: int = 0,
                 conditioning: str = "projection"):
        super().__init__()
        blocks: list[nn.Module] = [_OptimizedBlock(channels, width)]
        blocks += [_CriticBlock(width, width, norm, down=True) for _ in range(critic_halvings(image_size) - 1)]
        blocks += [_CriticBlock(width, width, norm, down=False) for _ in range(_BLOCKS_AT_FINAL_SIZE)]
        self.features = nn.Sequential(*blocks, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self._heads(width, num_classes, conditioning)
