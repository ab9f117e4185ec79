"""The layers every architecture shares: the resolutions' base sizes, the critic's norms, its
scoring heads (and conditioning), and spectral normalisation. DCGAN (`wgan.dcgan`), the MLP
(`wgan.mlp`) and the ResNet (`wgan.resnet`) build on it; `wgan.networks` builds them from a config.

Resolutions 28, 32, 48, 64 and 96 px are built from a 4x4 (7x7 for 28 px, 6x6 for
48 and 96 px) base doubled by stride-2 layers. Critic normalisation is none, layer
norm, batch norm or spectral normalisation (Miyato et al. 2018) of every critic layer;
batch norm is refused with the gradient penalty by `TrainConfig.validate`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

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
