"""The losses' mathematics against known answers (Arjovsky et al. 2017; Gulrajani et al. 2017)."""

import pytest
import torch
from torch import nn

from wgan import losses, toy
from wgan.config import TrainConfig
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers


def smooth_critic(inputs: int) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(inputs, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def penalty_by_finite_differences(critic: nn.Module, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    grads = torch.zeros_like(x)
    with torch.no_grad():
        for j in range(x.shape[1]):
            e = torch.zeros_like(x)
            e[:, j] = h
            grads[:, j] = (critic(x + e) - critic(x - e)).squeeze(1) / (2 * h)
    return ((grads.norm(dim=1) - 1) ** 2).mean()


def test_gradient_penalty_matches_finite_differences():
    critic = smooth_critic(5)
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    ours = losses.gradient_penalty(critic(x).squeeze(1), x)
    reference = penalty_by_finite_differences(critic, x.detach())
    assert ours.item() > 1e-3  # not trivially zero
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-9)


def test_penalty_parameter_gradient_matches_finite_differences():
    """The penalty's gradient w.r.t. the critic's weights (the double backward) is right."""
    critic = smooth_critic(3)
    x = torch.randn(6, 3, dtype=torch.float64)
    weight = critic[0].weight
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(losses.gradient_penalty(critic(x_req).squeeze(1), x_req), weight)
    h = 1e-6
    with torch.no_grad():
        weight[1, 2] += h
        up = penalty_by_finite_differences(critic, x, 1e-5)
        weight[1, 2] -= 2 * h
        down = penalty_by_finite_differences(critic, x, 1e-5)
        weight[1, 2] += h
    fd = (up - down) / (2 * h)
    assert abs(grad[1, 2].item()) > 1e-4
    assert abs(grad[1, 2].item() - fd.item()) < 1e-4 * max(1.0, abs(fd.item()))


def image_config(**overrides) -> TrainConfig:
    base = dict(image_size=28, channels=1, width=8, z_dim=16, batch=16)
    base.update(overrides)
    return TrainConfig(**base).resolved()


def test_wgan_step_keeps_every_critic_weight_in_clip_range():
    cfg = image_config(loss="wgan", clip=0.01)
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_critic(cfg)
    with torch.no_grad():
        for p in D.parameters():
            p.mul_(100).add_(0.5)  # far outside [-c, c] before the step
    g_opt, d_opt = build_optimizers(cfg, G, D)
    real = torch.rand(cfg.batch, 1, 28, 28) * 2 - 1
    TrainStep(cfg, G, D, g_opt, d_opt)([(real, None)] * cfg.n_critic)
    params = torch.cat([p.detach().flatten() for p in D.parameters()])
    assert params.abs().max().item() <= cfg.clip + 1e-9
    assert params.abs().max().item() > cfg.clip * 0.99  # clipping, not shrinking to zero


def test_wgan_gp_refuses_batch_norm_in_critic():
    import pytest

    from wgan.config import ConfigError

    with pytest.raises(ConfigError, match="batch norm"):
        image_config(loss="wgan-gp", critic_norm="batch")


def estimate_w1(sample_p, sample_q, dims: int, steps: int = 1500, lam: float = 10.0) -> float:
    """Train a WGAN-GP critic between two fixed distributions; return E_P[D] - E_Q[D]."""
    torch.manual_seed(0)
    critic = toy.ToyCritic(dims, 128)
    opt = torch.optim.Adam(critic.parameters(), lr=3e-4, betas=(0.0, 0.9))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        real, fake = sample_p(256, g), sample_q(256, g)
        x_hat = losses.interpolates(real, fake)
        real_s, fake_s, hat_s = critic(torch.cat([real, fake, x_hat])).split(256)
        loss = losses.critic_loss("wgan-gp", real_s, fake_s) + lam * losses.gradient_penalty(hat_s, x_hat)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return losses.wasserstein_estimate(critic(sample_p(20000, g)), critic(sample_q(20000, g))).item()


def assert_w1_estimate(w: float, true_w: float, lam: float = 10.0) -> None:
    """Within 10% of W1, and near the penalised optimum: for a transport along one
    direction the GP critic's optimal slope s minimises -s*W + lam*(s-1)^2, so
    s = 1 + W/(2*lam) and the estimate is W*(1 + W/(2*lam)), slightly above W1."""
    assert abs(w - true_w) <= 0.1 * true_w, w
    assert abs(w - true_w * (1 + true_w / (2 * lam))) <= 0.04 * true_w, w


def test_critic_estimates_w1_between_parallel_lines():
    theta = 1.0  # Arjovsky et al. 2017, Example 1: W(P0, P_theta) = |theta|
    w = estimate_w1(lambda n, g: toy.parallel_lines(n, 0.0, g), lambda n, g: toy.parallel_lines(n, theta, g), 2)
    assert_w1_estimate(w, abs(theta))


def test_critic_estimates_w1_between_shifted_gaussians():
    mu = 1.0  # W1(N(0, I), N((mu, 0), I)) = |mu|
    w = estimate_w1(lambda n, g: toy.shifted_gaussian(n, mu, g), lambda n, g: toy.shifted_gaussian(n, 0.0, g), 2)
    assert_w1_estimate(w, abs(mu))


def test_wgan_gp_covers_all_eight_gaussians():
    """Gulrajani et al. 2017, Fig. 1: lambda 0.1 as in the paper's toy code; a short run."""
    torch.manual_seed(0)
    cfg = TrainConfig(loss="wgan-gp", z_dim=2, image_size=28, channels=1, lambda_gp=0.1, lr=1e-3,
                      betas=(0.5, 0.9), batch=256).resolved()
    G, D = toy.ToyGenerator(2, 2, 128), toy.ToyCritic(2, 128)
    step = TrainStep(cfg, G, D, *build_optimizers(cfg, G, D))
    g = torch.Generator().manual_seed(1)

    def coverage():
        with torch.no_grad():
            return toy.mode_coverage(G(torch.randn(4000, 2, generator=g)), toy.EIGHT_GAUSSIAN_CENTERS, 0.25)

    assert coverage().min() < 0.05  # the untrained generator misses modes
    for _ in range(400):
        step((toy.eight_gaussians(256, g), None) for _ in range(cfg.n_critic))
    share = coverage()
    assert share.min() > 0.05, share  # every mode holds a real share of the samples
    assert share.sum() > 0.6, share   # and most samples sit on some mode


def test_conditional_gradient_penalty_matches_finite_differences_with_labels_held_fixed():
    torch.manual_seed(3)
    critic = toy.ToyCritic(3, 16, num_classes=4).double()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    ours = losses.gradient_penalty(critic(x, labels), x)
    reference = penalty_by_finite_differences(lambda v: critic(v, labels).unsqueeze(1), x.detach())
    assert ours.item() > 1e-3
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-9)
    # the label matters: the same points under other labels give another penalty
    assert not torch.isclose(ours, losses.gradient_penalty(critic(x, (labels + 1) % 4), x))


@pytest.mark.parametrize("conditioning", ["projection", "aux"])
def test_conditional_wgan_gp_puts_each_label_on_its_own_mode(conditioning):
    torch.manual_seed(0)
    cfg = TrainConfig(loss="wgan-gp", z_dim=2, image_size=28, channels=1, lambda_gp=0.1, lr=1e-3,
                      betas=(0.5, 0.9), batch=128, num_classes=2, conditioning=conditioning).resolved()
    G, D = toy.ToyGenerator(2, 2, 64, num_classes=2), toy.ToyCritic(2, 64, num_classes=2, conditioning=conditioning)
    step = TrainStep(cfg, G, D, *build_optimizers(cfg, G, D))
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        step(toy.two_labelled_gaussians(128, g) for _ in range(cfg.n_critic))
    with torch.no_grad():
        for label, center in enumerate(toy.TWO_LABEL_CENTERS):
            samples = G(torch.randn(2000, 2, generator=g), torch.full((2000,), label))
            near = (samples - center).norm(dim=1) < 0.5
            assert near.float().mean() > 0.8, (label, near.float().mean())  # its own mode, not the other's


def test_hinge_loss_on_known_scores_and_its_defaults():
    """Miyato et al. 2018, Eq. 16-17: critic E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))], generator -E[D(G(z))]."""
    real = torch.tensor([2.0, 0.5, -1.0])  # hinge terms 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 1.0])  # 0, 1, 2
    torch.testing.assert_close(losses.critic_loss_real("hinge", real), torch.tensor(2.5 / 3))
    torch.testing.assert_close(losses.critic_loss_fake("hinge", fake), torch.tensor(1.0))
    torch.testing.assert_close(losses.critic_loss("hinge", real, fake), torch.tensor(2.5 / 3 + 1.0))
    torch.testing.assert_close(losses.generator_loss("hinge", fake), torch.tensor(1.0 / 3))
    cfg = image_config(loss="hinge")  # the SN-GAN authors' CIFAR-10 settings
    assert (cfg.optimizer, cfg.lr, cfg.betas, cfg.n_critic, cfg.critic_norm) == ("adam", 2e-4, (0.0, 0.9), 5, "spectral")
