"""Reduced precision of the training step against fp32 on the same batch: bf16 autocast, and
fp16 autocast with loss scaling. On the CPU here (bf16 and fp16 are emulated where the CPU
lacks their instructions, which changes speed, not results) and on a CUDA GPU where there is one."""

from __future__ import annotations

import copy


import pytest
import torch
from torch import nn

from wgan import precision
from wgan.config import TrainConfig
from wgan.losses import gradient_penalty
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers, state_in_layout

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


# The faster paths compute the same step. Measured here (width 16, batch 32, 32 px, fp32, five
# steps): channels_last and the fused Adam differ from the reference step only by float rounding,
# 1e-8 to 5e-8 relative on the weights, where one step fewer is 2e-3 off.
SAME_STEP_RTOL = 1e-5


def trained_weights(channels_last: bool, fused: bool, steps: int = 5) -> torch.Tensor:
    cfg = TrainConfig(loss="wgan-gp", width=16, z_dim=32, batch=32, n_critic=2, image_size=32, channels=3).resolved()
    torch.manual_seed(0)
    generator, critic = build_generator(cfg), build_critic(cfg)
    if channels_last:
        generator, critic = generator.to(memory_format=torch.channels_last), critic.to(memory_format=torch.channels_last)
    step = TrainStep(cfg, generator, critic, *build_optimizers(cfg, generator, critic, fused=fused),
                     precision_mode="fp32")
    if channels_last:
        step.memory_format = torch.channels_last  # as a bf16 step on an AMX CPU takes it
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        step((torch.rand(32, 3, 32, 32, generator=data) * 2 - 1, None) for _ in range(cfg.n_critic))
    return torch.cat([p.detach().flatten() for p in (*generator.parameters(), *critic.parameters())])


@pytest.mark.parametrize("channels_last,fused", [(True, False), (False, True), (True, True)],
                         ids=["channels_last", "fused Adam", "both"])
def test_the_faster_layout_and_optimizer_compute_the_reference_step(channels_last, fused, one_thread):
    reference = trained_weights(channels_last=False, fused=False)
    faster = trained_weights(channels_last=channels_last, fused=fused)
    assert relative_error(faster, reference) < SAME_STEP_RTOL
    assert not torch.equal(reference, trained_weights(channels_last=False, fused=False, steps=4))  # steps moved them


def test_precision_auto_stays_fp32_in_the_default_layout_on_a_cpu_without_bf16(monkeypatch):
    """On an AVX2-only CPU (its /proc/cpuinfo flags, read by the same check the code makes) auto is
    fp32 in PyTorch's default layout; with AMX it is bf16 in channels_last."""
    avx2_only = "flags : fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi2 avx512f avx512bw"
    amx = avx2_only + " avx512_bf16 amx_bf16 amx_tile"
    assert not precision.cpu_has_bf16(avx2_only) and precision.cpu_has_bf16(amx)
    cpu, check = torch.device("cpu"), precision.cpu_has_bf16
    for cpuinfo, mode, layout in ((avx2_only, "fp32", torch.contiguous_format), (amx, "bf16", torch.channels_last)):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda text=None, info=cpuinfo: check(info))
        assert precision.effective("auto", cpu) == mode
        assert precision.memory_format(precision.effective("auto", cpu), cpu) == layout
        cfg = TrainConfig(loss="wgan-gp", width=8, z_dim=16, batch=8, image_size=28, channels=1).resolved()
        generator, critic = build_generator(cfg), build_critic(cfg)
        step = TrainStep(cfg, generator, critic, *build_optimizers(cfg, generator, critic), precision_mode="auto")
        assert (step.precision, step.memory_format) == (mode, layout)


def test_a_checkpoint_of_another_layout_resumes_the_reference_step(one_thread):
    """An fp32 run (contiguous) resumed at bf16 on an AMX CPU takes channels_last: its loaded Adam
    state must follow the parameters' layout (`wgan.step.state_in_layout`), or the fused kernel
    updates each weight from another's moments."""
    cfg = TrainConfig(loss="wgan-gp", width=16, z_dim=32, batch=32, n_critic=2, image_size=32, channels=3).resolved()
    data = torch.Generator().manual_seed(1)
    batches = [torch.rand(32, 3, 32, 32, generator=data) * 2 - 1 for _ in range(8)]

    def run(layout, steps: range, state=None):
        torch.manual_seed(0)
        generator, critic = build_generator(cfg).to(memory_format=layout), build_critic(cfg).to(memory_format=layout)
        g_opt, d_opt = build_optimizers(cfg, generator, critic, fused=True)
        if state is not None:
            for module, saved in zip((generator, critic, g_opt, d_opt), state):
                module.load_state_dict(saved)
            for optimizer in (g_opt, d_opt):
                state_in_layout(optimizer)
        step = TrainStep(cfg, generator, critic, g_opt, d_opt, precision_mode="fp32")
        step.memory_format = layout
        torch.manual_seed(100 + steps.start)
        for k in steps:
            step((batches[2 * k + i], None) for i in range(2))
        weights = torch.cat([p.detach().flatten() for p in (*generator.parameters(), *critic.parameters())])
        return weights, [m.state_dict() for m in (generator, critic, g_opt, d_opt)]

    _, halfway = run(torch.contiguous_format, range(0, 2))
    # (each run gets its own copy: a loaded optimizer state is stepped in place)
    reference, _ = run(torch.contiguous_format, range(2, 4), copy.deepcopy(halfway))
    resumed, _ = run(torch.channels_last, range(2, 4), copy.deepcopy(halfway))
    assert relative_error(resumed, reference) < SAME_STEP_RTOL
