"""bf16 autocast of the training step against fp32 on the same batch (CPU here; bf16 is emulated
where the CPU lacks bf16 instructions, which changes speed, not results)."""

from __future__ import annotations

import torch

from wgan import precision
from wgan.config import TrainConfig
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers

# Measured on this 2-core CPU at width 16, batch 32, 32 px RGB: penalty relative error
# about 1e-2, critic gradients about 1e-2 (bf16 keeps 8 mantissa bits: 2^-8 = 0.4% per op).
PENALTY_RTOL = 0.05
GRADIENT_RTOL = 0.05


def one_critic_update(prec: str) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    cfg = TrainConfig(loss="wgan-gp", width=16, z_dim=32, batch=32, image_size=32, channels=3,
                      precision=prec).resolved()
    torch.manual_seed(0)
    generator, critic = build_generator(cfg), build_critic(cfg)
    step = TrainStep(cfg, generator, critic, *build_optimizers(cfg, generator, critic))
    assert step.precision == prec
    real = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.manual_seed(2)  # the same latents and interpolation weights in both runs
    stats = step.critic_update(real)
    return stats, [p.grad.clone() for p in critic.parameters()]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_bf16_step_matches_fp32_on_penalty_and_critic_gradients():
    stats32, grads32 = one_critic_update("fp32")
    stats16, grads16 = one_critic_update("bf16")
    assert stats32["gradient_penalty"].item() > 1e-3  # a penalty worth comparing
    assert stats16["gradient_penalty"].dtype == torch.float32  # the norm is taken in fp32
    assert relative_error(stats16["gradient_penalty"], stats32["gradient_penalty"]) < PENALTY_RTOL
    flat32, flat16 = torch.cat([g.flatten() for g in grads32]), torch.cat([g.flatten() for g in grads16])
    assert relative_error(flat16, flat32) < GRADIENT_RTOL
    assert not torch.equal(flat16, flat32)  # bf16 really ran
    assert all(torch.isfinite(g).all() for g in grads16)


def test_auto_precision_is_bf16_only_where_the_hardware_has_it():
    assert precision.effective("auto", torch.device("cpu")) == ("bf16" if precision.cpu_has_bf16() else "fp32")
    assert precision.effective("fp32", torch.device("cpu")) == "fp32"
    assert precision.effective("bf16", torch.device("cpu")) == "bf16"
