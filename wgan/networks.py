"""Generator and critic networks.

* DCGAN (Radford, Metz, Chintala 2016): transposed-convolution generator with
  batch norm and ReLU, strided-convolution critic with LeakyReLU(0.2); the same
  architecture family that both WGAN papers train on images.
* The 4-layer, 512-unit ReLU MLP generator of Arjovsky et al. 2017 (Sec. 4.3,
  Fig. 6), used there to show that WGAN trains without batch norm.
* The WGAN-GP paper's ResNet (`wgan.resnet`), which builds on this module's sizes and norms.

Resolutions 28, 32, 48, 64 and 96 px are built from a 4x4 (7x7 for 28 px, 6x6 for
48 and 96 px) base doubled by stride-2 layers. Critic normalisation is none, layer
norm, batch norm or spectral normalisation (Miyato et al. 2018) of every critic layer;
batch norm is refused with the gradient penalty by `TrainConfig.validate`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from wgan.config import TrainConfig

# side length of the first feature map, and how many doublings reach the image size
_BASE = {28: (7, 2), 32: (4, 3), 48: (6, 3), 64: (4, 4), 96: (6, 4)}


def base_and_doublings(image_size: int) -> tuple[int, int]:
    if image_size not in _BASE:
        raise ValueError(f"DCGAN and ResNet networks support sizes {sorted(_BASE)}, got {image_size}")
    return _BASE[image_size]


def critic_norm(kind: str, channels: int) -> nn.Module:
    """The norm layer of ``--critic-norm`` (none and spectral: no layer; spectral is applied to
    the weights by `build_critic`)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        # Layer norm over (C, H, W) per sample: Gulrajani et al. 2017, Sec. 4.
        return nn.GroupNorm(1, channels)
    return nn.Identity()


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


class ScoringCritic(nn.Module):
    """A critic's scoring of its features phi(x) (``self.features``, set by the subclass): an
    unbounded score, no sigmoid.

    With ``num_classes`` and ``conditioning="projection"`` it is a projection critic
    (Miyato and Koyama 2018): score = linear(phi(x)) + <embed(y), phi(x)>. With
    ``conditioning="aux"`` the score ignores the label and a second head classifies
    phi(x) (Odena et al. 2017): forward then returns ``(score, class_logits)``, one
    forward for both so that DistributedDataParallel sees every parameter used.
    """

    features: nn.Module

    def _heads(self, feat: int, num_classes: int, conditioning: str) -> None:
        self.head = nn.Linear(feat, 1)
        self.embed = nn.Embedding(num_classes, feat) if num_classes and conditioning == "projection" else None
        self.classify = nn.Linear(feat, num_classes) if num_classes and conditioning == "aux" else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        h = self.features(x)
        score = self.head(h).squeeze(1)
        if self.embed is not None:
            score = score + (self.embed(labels) * h).sum(1)
        if self.classify is not None:
            return score, self.classify(h)
        return score


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


def spectrally_normalised(critic: nn.Module) -> nn.Module:
    """Every conv, linear and embedding layer of ``critic`` divided by its largest singular value,
    estimated by one power iteration per training forward (Miyato et al. 2018, Algorithm 1; the
    embedding of a projection critic too, as their SNEmbedID). torch's parametrization: the
    state_dict holds ``<layer>.parametrizations.weight.original`` and the power iteration's
    vectors, and loads into a critic built the same way."""
    for module in list(critic.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
            spectral_norm(module)
    return critic


def build_generator(cfg: TrainConfig) -> nn.Module:
    if cfg.arch == "mlp":
        return MLPGenerator(cfg.z_dim, cfg.channels, cfg.image_size, 512, cfg.num_classes)
    if cfg.arch == "resnet":
        # imported here: wgan.resnet builds on this module
        from wgan.resnet import ResNetGenerator

        return ResNetGenerator(cfg.z_dim, cfg.channels, cfg.image_size, cfg.width, cfg.num_classes)
    return DCGANGenerator(cfg.z_dim, cfg.channels, cfg.image_size, cfg.width, cfg.num_classes)


def build_critic(cfg: TrainConfig) -> nn.Module:
    """The critic of ``cfg.arch`` (the MLP generator's is the DCGAN critic, as in Arjovsky et al. 2017)."""
    if cfg.arch == "resnet":
        from wgan.resnet import ResNetCritic

        critic = ResNetCritic(cfg.channels, cfg.image_size, cfg.width, cfg.critic_norm, cfg.num_classes,
                              cfg.conditioning)
    else:
        critic = DCGANCritic(cfg.channels, cfg.image_size, cfg.width, cfg.critic_norm, cfg.num_classes,
                             cfg.conditioning)
    return spectrally_normalised(critic) if cfg.critic_norm == "spectral" else critic
