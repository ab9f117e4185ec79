"""Critic and generator objectives of the four losses, as the papers give them.

All functions take critic scores (unbounded, no sigmoid) and return scalar
tensors; none of them synchronises with the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# The losses whose critic gap E[D(real)] - E[D(fake)] estimates W1 (Arjovsky et al. 2017, Eq. 3).
# Under gan or hinge the same gap is only how far apart the critic puts the two batches.
WASSERSTEIN_LOSSES = frozenset({"wgan", "wgan-gp"})


def gap_metric(loss: str) -> str:
    """The name the critic gap is logged under: `wasserstein_estimate` only for a Wasserstein loss."""
    return "wasserstein_estimate" if loss in WASSERSTEIN_LOSSES else "critic_gap"


def wasserstein_estimate(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[D(real)] - E[D(fake)]: the critic's estimate of W1 (Arjovsky et al. 2017, Eq. 3)."""
    return real_scores.mean() - fake_scores.mean()


def interpolates(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """x_hat = eps * x + (1 - eps) * x_tilde, eps ~ U[0, 1] per sample (Gulrajani et al. 2017, Alg. 1)."""
    eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
    return (eps * real + (1 - eps) * fake).requires_grad_(True)


def gradient_penalty(scores_hat: torch.Tensor, x_hat: torch.Tensor,
                     loss_scale: torch.Tensor | None = None) -> torch.Tensor:
    """(||grad_x D(x_hat)||_2 - 1)^2 averaged over samples (Gulrajani et al. 2017, Eq. 3).

    The gradient is taken with ``create_graph=True`` so that the penalty itself is
    differentiated by the single ``backward`` of the critic loss; that keeps
    DistributedDataParallel correct (its hooks fire on parameter gradients only).

    ``loss_scale`` (fp16): the scores are multiplied by it before the inner gradient,
    which runs through the half-precision backward of the critic, and the gradient is
    divided by it before the norm, as PyTorch's AMP examples do for a gradient penalty.
    Unscaled, that gradient underflows in fp16; an overflow of the scaled one makes the
    penalty infinite, and the loss scaler then skips the step and lowers the scale.
    """
    outputs = scores_hat.sum() if loss_scale is None else scores_hat.sum() * loss_scale
    (grad,) = torch.autograd.grad(outputs, x_hat, create_graph=True)
    if loss_scale is not None:
        grad = grad / loss_scale
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss_real(loss: str, real_scores: torch.Tensor) -> torch.Tensor:
    """The critic objective's term on real samples (to minimise)."""
    if loss in ("wgan", "wgan-gp"):
        return -real_scores.mean()
    if loss == "hinge":
        # E[max(0, 1 - D(x))] (Lim and Ye 2017; Miyato et al. 2018, Eq. 16)
        return F.relu(1 - real_scores).mean()
    # Non-saturating GAN: -log sigmoid(D(x)).
    return F.softplus(-real_scores).mean()


def critic_loss_fake(loss: str, fake_scores: torch.Tensor) -> torch.Tensor:
    """The critic objective's term on generated samples (to minimise)."""
    if loss in ("wgan", "wgan-gp"):
        return fake_scores.mean()
    if loss == "hinge":
        # E[max(0, 1 + D(G(z)))] (Miyato et al. 2018, Eq. 16)
        return F.relu(1 + fake_scores).mean()
    # Non-saturating GAN: -log(1 - sigmoid(D(G(z)))).
    return F.softplus(fake_scores).mean()


def critic_loss(loss: str, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The critic's objective to minimise, without any penalty term."""
    return critic_loss_real(loss, real_scores) + critic_loss_fake(loss, fake_scores)


def generator_loss(loss: str, fake_scores: torch.Tensor) -> torch.Tensor:
    # -E[D(G(z))]: the WGAN generator's, and the hinge loss's (Miyato et al. 2018, Eq. 17)
    if loss in ("wgan", "wgan-gp", "hinge"):
        return -fake_scores.mean()
    # Non-saturating generator loss: -log sigmoid(D(G(z))) (Goodfellow et al. 2014, Sec. 3).
    return F.softplus(-fake_scores).mean()


# Auxiliary-classifier weights of the WGAN-GP authors' conditional CIFAR-10 code
# (Gulrajani et al. 2017, gan_cifar_resnet.py: ACGAN_SCALE 1, ACGAN_SCALE_G 0.1).
AUX_CRITIC_WEIGHT = 1.0
AUX_GENERATOR_WEIGHT = 0.1


def class_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of an auxiliary classifier head (Odena et al. 2017): the critic's on
    real images with their labels, the generator's on its samples with the labels asked for."""
    return F.cross_entropy(logits.float(), labels)


@torch.no_grad()
def clip_weights(critic: torch.nn.Module, c: float) -> None:
    """Clamp every critic parameter to [-c, c] (Arjovsky et al. 2017, Alg. 1, line 7)."""
    for p in critic.parameters():
        p.clamp_(-c, c)
