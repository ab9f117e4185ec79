"""Generator and critic networks, built from a config: this module only builds.

* DCGAN (Radford, Metz, Chintala 2016): `wgan.dcgan`.
* The 4-layer, 512-unit ReLU MLP generator of Arjovsky et al. 2017 (Sec. 4.3, Fig. 6): `wgan.mlp`.
* The WGAN-GP paper's ResNet: `wgan.resnet`.

Each builds on the shared layers of `wgan.layers` (sizes, norms, scoring heads, spectral norm).
"""

from __future__ import annotations

from torch import nn

from wgan.config import TrainConfig
from wgan.dcgan import DCGANCritic, DCGANGenerator
from wgan.layers import spectrally_normalised
from wgan.mlp import MLPGenerator
from wgan.resnet import ResNetCritic, ResNetGenerator


def build_generator(cfg: TrainConfig) -> nn.Module:
    if cfg.arch == "mlp":
        return MLPGenerator(cfg.z_dim, cfg.channels, cfg.image_size, 512, cfg.num_classes)
    if cfg.arch == "resnet":
        return ResNetGenerator(cfg.z_dim, cfg.channels, cfg.image_size, cfg.width, cfg.num_classes)
    return DCGANGenerator(cfg.z_dim, cfg.channels, cfg.image_size, cfg.width, cfg.num_classes)


def build_critic(cfg: TrainConfig) -> nn.Module:
    """The critic of ``cfg.arch`` (the MLP generator's is the DCGAN critic, as in Arjovsky et al. 2017)."""
    if cfg.arch == "resnet":
        critic = ResNetCritic(cfg.channels, cfg.image_size, cfg.width, cfg.critic_norm, cfg.num_classes,
                              cfg.conditioning)
    else:
        critic = DCGANCritic(cfg.channels, cfg.image_size, cfg.width, cfg.critic_norm, cfg.num_classes,
                             cfg.conditioning)
    return spectrally_normalised(critic) if cfg.critic_norm == "spectral" else critic
