"""Reduced precision of the training step against fp32 on the same batch: bf16 autocast, and
fp16 autocast with loss scaling. On the CPU here (bf16 and fp16 are emulated where the CPU
lacks their instructions, which changes speed, not results) and on a CUDA GPU where there is one."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from wgan import precision
from wgan.config import TrainConfig
from wgan.losses import gradient_penalty
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers

# Measured at width 16, batch 32, 32 px RGB, on this 2-core CPU: bf16 penalty relative error
# 0.7%, critic gradients 2.1% (bf16 keeps 8 mantissa bits: 2^-8 = 0.4% per op); fp16 (11 bits)
# 0.35% and 0.75%. The same bounds held on an H200.
PENALTY_RTOL = 0.05
GRADIENT_RTOL = 0.05

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def one_critic_update(prec: str, device: str) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    cfg = TrainConfig(loss="wgan-gp", width=16, z_dim=32, batch=32, image_size=32, channels=3).resolved()
    torch.manual_seed(0)
    generator, critic = build_generator(cfg).to(device), build_critic(cfg).to(device)
    # The library runs fp16 anywhere; the CLI only on GPUs.
    step = TrainStep(cfg, generator, critic, *build_optimizers(cfg, generator, critic), precision_mode=prec)
    assert step.precision == prec
    if prec == "fp16":
        # The scaler's first scale, 2^16, overflows this critic's penalty gradient: the step would be
        # skipped (and the scale halved) until it fits. Start where it fits, to compare one step.
        step.d_scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 8)
    real = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device) * 2 - 1
    torch.manual_seed(2)  # the same latents and interpolation weights in every run
    stats = step.critic_update(real)
    return stats, [p.grad.clone().cpu() for p in critic.parameters()]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prec", ["bf16", "fp16"])
def test_reduced_precision_step_matches_fp32_on_penalty_and_critic_gradients(prec, device):
    stats32, grads32 = one_critic_update("fp32", device)
    stats16, grads16 = one_critic_update(prec, device)
    assert stats32["gradient_penalty"].item() > 1e-3  # a penalty worth comparing
    assert stats16["gradient_penalty"].dtype == torch.float32  # the norm is taken in fp32
    assert relative_error(stats16["gradient_penalty"], stats32["gradient_penalty"]) < PENALTY_RTOL
    flat32, flat16 = torch.cat([g.flatten() for g in grads32]), torch.cat([g.flatten() for g in grads16])
    assert relative_error(flat16, flat32) < GRADIENT_RTOL
    assert not torch.equal(flat16, flat32)  # reduced precision really ran
    assert all(torch.isfinite(g).all() for g in grads16)
    assert ("amp/loss_scale" in stats16) == (prec == "fp16")


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_penalty_needs_its_inner_gradient_scaled(device):
    """A critic with small scores (1e-6) has input gradients below fp16's range: without a loss
    scale on the penalty's inner gradient they flush to zero and the critic's gradients are lost
    (the failure other GAN libraries hit); with one they match fp32."""

    def critic_gradients(prec: str, loss_scale: float | None) -> torch.Tensor:
        torch.manual_seed(0)
        critic = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8 * 8 * 8, 1))
        critic = critic.to(device)
        x_hat = (torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))).to(device).requires_grad_(True)
        with precision.autocast(prec, torch.device(device)):
            scores = critic(x_hat).float() * 1e-6
        scale = None if loss_scale is None else torch.tensor(loss_scale, device=device)
        penalty = gradient_penalty(scores, x_hat, scale)
        (penalty * (loss_scale or 1.0)).backward()  # the outer loss scaled, as GradScaler.scale does
        return torch.cat([p.grad.flatten() for p in critic.parameters() if p.grad is not None]) / (loss_scale or 1.0)

    reference = critic_gradients("fp32", None)
    assert relative_error(critic_gradients("fp16", 2.0 ** 12), reference) < 0.02
    assert relative_error(critic_gradients("fp16", None), reference) > 0.5


def test_fp16_skipped_steps_are_not_divergence():
    """A step the loss scaler skipped (gradients overflowed) may log infinite losses: they are
    dropped; a run whose scale collapsed keeps them, and is then stopped as diverged."""
    inf = float("inf")
    healthy = [(1, {"loss/critic": inf, "amp/loss_scale": 32768.0}), (2, {"loss/critic": 0.5, "amp/loss_scale": 32768.0})]
    assert precision.without_skipped_steps(healthy) == [(1, {"amp/loss_scale": 32768.0}), healthy[1]]
    collapsed = [(9, {"loss/critic": inf, "amp/loss_scale": precision.MIN_LOSS_SCALE / 2})]
    assert precision.without_skipped_steps(collapsed) == collapsed


def test_auto_precision_is_bf16_only_where_the_hardware_has_it():
    assert precision.effective("auto", torch.device("cpu")) == ("bf16" if precision.cpu_has_bf16() else "fp32")
    assert precision.effective("fp32", torch.device("cpu")) == "fp32"
    assert precision.effective("bf16", torch.device("cpu")) == "bf16"
