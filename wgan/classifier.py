"""The project classifier: a small CNN whose penultimate layer is the feature space of evaluation.

Inception-v3 features (the FID convention) need downloaded ImageNet weights and describe
28 px grey clothing poorly; a classifier trained on the dataset itself is offline, cheap
on a CPU, and its features separate exactly the classes a generator should cover (the
"domain-specific classifier" practice of e.g. the MNIST FID of Lucic et al. 2018,
"Are GANs Created Equal?").

Three conv-BN-ReLU blocks (16, 32, 64 channels; 2x2 max-pooling after the first two)
and adaptive average pooling to 3x3 make it independent of the image size (28, 32, 64,
96 px); a 128-unit ReLU layer gives the features and a linear layer the logits. Input:
float32 NCHW in [-1, 1], the reader's format. Sized by measurement on a 2-core CPU:
global pooling (1x1) stayed below 89% on Fashion-MNIST after 3 epochs, 3x3 passes 90%,
and twice the channels cost 3x the time for no needed gain.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

FEATURE_DIM = 128
POOLED_SIDE = 3


@dataclass(frozen=True)
class ClassifierSpec:
    """What it takes to rebuild the network: stored beside its weights."""

    channels: int
    image_size: int
    num_classes: int
    feature_dim: int = FEATURE_DIM

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(True)]


class Classifier(nn.Module):
    def __init__(self, spec: ClassifierSpec):
        super().__init__()
        self.spec = spec
        self.body = nn.Sequential(
            *_block(spec.channels, 16), nn.MaxPool2d(2),
            *_block(16, 32), nn.MaxPool2d(2),
            *_block(32, 64), nn.AdaptiveAvgPool2d(POOLED_SIDE), nn.Flatten(),
            nn.Linear(64 * POOLED_SIDE**2, spec.feature_dim), nn.ReLU(True),
        )
        self.head = nn.Linear(spec.feature_dim, spec.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, feature_dim) penultimate activations: the space the sample-quality metrics measure in."""
        return self.body(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    forward = logits


def fit(model: Classifier, epoch_batches, steps_per_epoch: int, epochs: int, lr: float, log=None) -> list[float]:
    """Adam with a one-cycle learning rate (Smith & Topin 2019); returns the mean loss of each epoch.

    ``epoch_batches(epoch)`` yields (images float NCHW in [-1, 1], labels) for one epoch. On
    Fashion-MNIST (4 epochs, batch 128, lr 2e-3) this reaches 90.9% test accuracy.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    losses = []
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for images, labels in epoch_batches(epoch):
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * len(labels), count + len(labels)
        losses.append(total / max(count, 1))
        if log is not None:
            log(epoch, losses[-1], count)
    return losses
