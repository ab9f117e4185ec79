"""--lr-decay linear (Gulrajani et al. 2017, gan_cifar_resnet.py): after k of N generator steps both
optimizers' rate is lr * (1 - k/N), and a checkpoint's schedule goes on where it was when restored."""

from __future__ import annotations

import pytest
import torch

from wgan import checkpoint as ckpt
from wgan.config import TrainConfig
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers, build_schedulers

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4


def built(lr_decay: str = "linear"):
    cfg = TrainConfig(image_size=28, channels=1, width=4, z_dim=8, batch=4, n_critic=1, steps=STEPS,
                      lr_decay=lr_decay).resolved()
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_critic(cfg)
    g_opt, d_opt = build_optimizers(cfg, G, D)
    schedulers = build_schedulers(cfg, g_opt, d_opt)
    step = TrainStep(cfg, G, D, g_opt, d_opt, precision_mode="fp32", schedulers=schedulers)
    return cfg, G, D, g_opt, d_opt, schedulers, step


def rates(*optimizers) -> list[float]:
    return [group["lr"] for optimizer in optimizers for group in optimizer.param_groups]


def test_linear_decay_after_k_of_n_steps_and_after_a_restore(tmp_path):
    cfg, G, D, g_opt, d_opt, schedulers, step = built()
    real = torch.rand(4, 1, 28, 28) * 2 - 1
    assert rates(g_opt, d_opt) == [cfg.lr, cfg.lr]
    for k in (1, 2):
        step([(real, None)])
        assert rates(g_opt, d_opt) == pytest.approx([cfg.lr * (1 - k / STEPS)] * 2)
    ckpt.save(tmp_path, state=ckpt.TrainingState(generator=G, critic=D, g_optimizer=g_opt, d_optimizer=d_opt, fixed_z=torch.zeros(1, 8), g_scheduler=schedulers[0], d_scheduler=schedulers[1]), step=2, cfg=cfg, mlflow_run_id=None)
    payload = ckpt.load(tmp_path)  # weights_only=True: the schedulers' state is plain data

    _, _, _, g2, d2, schedulers2, step2 = built()  # a restarted worker: everything built afresh
    g2.load_state_dict(payload["g_optimizer"])
    d2.load_state_dict(payload["d_optimizer"])
    ckpt.restore_schedulers(payload, *schedulers2, lr=cfg.lr)
    assert rates(g2, d2) == pytest.approx([cfg.lr * (1 - 2 / STEPS)] * 2)
    step2([(real, None)])
    assert rates(g2, d2) == pytest.approx([cfg.lr * (1 - 3 / STEPS)] * 2)
    step2([(real, None)])
    assert rates(g2, d2) == [0.0, 0.0]  # 0 after the last step

    # PBT restarts from another trial's checkpoint with its own lr: the schedule's step, the new lr
    _, _, _, g3, d3, schedulers3, step3 = built()
    ckpt.restore_schedulers(payload, *schedulers3, lr=1e-3)
    assert rates(g3, d3) == pytest.approx([1e-3 * (1 - 2 / STEPS)] * 2)
    step3([(real, None)])  # and it stays this run's schedule
    assert rates(g3, d3) == pytest.approx([1e-3 * (1 - 3 / STEPS)] * 2)


def test_no_decay_keeps_the_rate_and_an_old_checkpoint_without_schedules_restores_to_lr():
    cfg, _, _, g_opt, d_opt, schedulers, step = built("none")
    for _ in range(3):
        step([(torch.rand(4, 1, 28, 28) * 2 - 1, None)])
    assert rates(g_opt, d_opt) == [cfg.lr, cfg.lr]
    ckpt.restore_schedulers({"g_scheduler": None, "d_scheduler": None}, *schedulers, lr=cfg.lr)
    assert rates(g_opt, d_opt) == [cfg.lr, cfg.lr]
