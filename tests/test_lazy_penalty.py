"""--gp-every K (Karras et al. 2020, sec. 3.1, applied to the WGAN-GP penalty): the penalty is taken
on every K-th critic update only, weighted lambda * K, so its expected gradient is the paper's; the
clock of critic updates survives a checkpoint; K = 1 is the paper's algorithm."""

from __future__ import annotations

import pytest
import torch

from pipelines.search_space import to_param_space
from wgan import checkpoint as ckpt
from wgan.config import ConfigError, TrainConfig
from wgan.errors import UserError
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers

pytestmark = pytest.mark.usefixtures("one_thread")


def built(gp_every: int) -> TrainStep:
    cfg = TrainConfig(loss="wgan-gp", image_size=28, channels=1, width=4, z_dim=8, batch=4, n_critic=1, steps=8,
                      gp_every=gp_every).resolved()
    torch.manual_seed(0)  # the same networks for every K
    generator, critic = build_generator(cfg), build_critic(cfg)
    return TrainStep(cfg, generator, critic, *build_optimizers(cfg, generator, critic), precision_mode="fp32")


def critic_gradient(step: TrainStep, updates_done: int) -> torch.Tensor:
    """The critic's gradient of one update taken after ``updates_done`` others, on a fixed batch and draw."""
    step.critic_updates = updates_done
    torch.manual_seed(1)
    step.critic_update(torch.rand(4, 1, 28, 28) * 2 - 1)
    return torch.cat([p.grad.flatten() for p in step.critic.parameters()])


def test_the_penalty_is_taken_every_kth_update_weighted_k_times():
    paper = critic_gradient(built(1), 0)
    lazy = built(4)
    taken, skipped = critic_gradient(lazy, 0), critic_gradient(built(4), 1)
    # the same loss terms; the penalty's share of the gradient is 4 times the paper's, or absent
    assert not torch.allclose(paper, skipped)
    torch.testing.assert_close(taken - skipped, 4 * (paper - skipped), rtol=1e-4, atol=1e-6)
    assert critic_gradient(built(4), 8).allclose(taken)  # update 8: on the clock again


def test_the_penalty_pass_runs_on_the_kth_updates_only():
    step = built(4)
    forwards = []
    step.critic.register_forward_hook(lambda module, args, out: forwards.append(args[0].shape[0]))
    for _ in range(8):
        step.critic_update(torch.rand(4, 1, 28, 28) * 2 - 1)
    # one joint forward of real and fake (8 images) per update, the interpolates' (4) on updates 0 and 4
    assert forwards == [8, 4, 8, 8, 8, 8, 4, 8, 8, 8] and step.critic_updates == 8


def test_the_clock_survives_a_checkpoint(tmp_path):
    step = built(4)
    for _ in range(3):
        step([(torch.rand(4, 1, 28, 28) * 2 - 1, None)])
    ckpt.save(tmp_path, state=ckpt.TrainingState(generator=step.generator, critic=step.critic, g_optimizer=step.g_optimizer, d_optimizer=step.d_optimizer, fixed_z=torch.zeros(1, 8), critic_updates=step.critic_updates), step=3, cfg=step.cfg, mlflow_run_id=None)
    assert ckpt.critic_updates_of(ckpt.load(tmp_path)) == 3
    # a checkpoint from before the clock was saved: n_critic updates per generator step
    assert ckpt.critic_updates_of({"step": 7, "config": {"n_critic": 5}}) == 35


@pytest.mark.parametrize("kwargs, message", [
    ({"loss": "wgan-gp", "gp_every": 0}, "--gp-every must be >= 1"),
    ({"loss": "wgan", "gp_every": 4}, "only --loss wgan-gp takes"),
])
def test_bad_intervals_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(image_size=28, channels=1, **kwargs).resolved()


def test_a_sweep_draws_it_as_a_categorical_knob_for_wgan_gp_trials_only():
    space = to_param_space({"loss": {"choice": ["wgan", "wgan-gp"]}, "gp_every": {"choice": [1, 4, 16]}})
    assert "gp_every" in space
    with pytest.raises(UserError, match="space.gp_every: 3 is not one of 1, 2, 4, 8, 16"):
        to_param_space({"gp_every": {"choice": [1, 3]}})
