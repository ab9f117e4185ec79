"""--critic-norm spectral (Miyato et al. 2018): every critic layer's largest singular value is 1,
weight clipping is off under --loss wgan, and a spectrally normalised critic checkpoints and loads."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from wgan import checkpoint as ckpt
from wgan.config import TrainConfig
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = (nn.Conv2d, nn.Linear, nn.Embedding)


def config(**overrides) -> TrainConfig:
    base = {"image_size": 28, "channels": 1, "width": 8, "z_dim": 16, "batch": 8, "critic_norm": "spectral", "n_critic": 1}
    return TrainConfig(**{**base, **overrides}).resolved()


def trained(cfg: TrainConfig, steps: int = 3):
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_critic(cfg)
    with torch.no_grad():  # raw weights whose spectral norms are far above 1
        for p in D.parameters():
            p.mul_(20)
    step = TrainStep(cfg, G, D, *build_optimizers(cfg, G, D), precision_mode="fp32")
    real = torch.rand(cfg.batch, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = torch.arange(cfg.batch) % 10 if cfg.num_classes else None
    for _ in range(steps):
        step([(real, labels)] * cfg.n_critic)
    return G, D, step


@pytest.mark.parametrize("arch,loss,extra", [("dcgan", "hinge", {}),
                                             ("resnet", "wgan-gp", {"conditional": True, "num_classes": 10})],
                         ids=["dcgan-hinge", "resnet-wgan-gp-projection"])
def test_every_critic_layer_has_largest_singular_value_one(arch, loss, extra):
    cfg = config(arch=arch, loss=loss, **extra)
    _, D, _ = trained(cfg)
    with torch.no_grad():  # more power iterations (one per training forward), as further steps would do
        for _ in range(30):
            D(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long) if cfg.num_classes else None)
    layers = [m for m in D.modules() if isinstance(m, LAYERS)]
    assert len(layers) == (3 if arch == "dcgan" else 12)  # 28 px: 2 convs + head; 10 convs + head + embedding
    for layer in layers:
        assert parametrize.is_parametrized(layer, "weight"), layer
        raw = torch.linalg.matrix_norm(layer.parametrizations.weight.original.detach().flatten(1), ord=2)
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)  # the effective weight
        assert raw > 2, "a raw weight already near 1 would prove nothing"
        assert 0.95 <= sigma <= 1.02, f"{layer}: largest singular value {sigma:.4f}"


def test_wgan_with_spectral_norm_does_not_clip():
    cfg = config(loss="wgan", clip=0.01)
    _, D, step = trained(cfg, steps=1)
    assert not step.clip
    assert max(p.detach().abs().max().item() for p in D.parameters()) > 10 * cfg.clip


def test_a_spectrally_normalised_critic_checkpoints_and_loads(tmp_path):
    cfg = config(arch="resnet", loss="wgan-gp", conditional=True, num_classes=10, steps=3)
    G, D, step = trained(cfg)
    ckpt.save(tmp_path, state=ckpt.TrainingState(generator=G, critic=D, g_optimizer=step.g_optimizer, d_optimizer=step.d_optimizer, fixed_z=torch.zeros(1, 16)), step=3, cfg=cfg, mlflow_run_id=None)
    payload = ckpt.load(tmp_path)  # weights_only=True
    assert any(k.endswith("parametrizations.weight.original") for k in payload["critic"])
    assert any(k.endswith("parametrizations.weight.0._u") for k in payload["critic"])
    fresh = build_critic(ckpt.config_of(payload))
    fresh.load_state_dict(payload["critic"])  # strict: every key matches
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 3, 5, 9])
    with torch.no_grad():  # eval: the saved power-iteration vectors, no new iteration
        assert torch.equal(fresh.eval()(x, y), D.eval()(x, y))


def test_a_spectral_wgan_critic_takes_the_wgan_gp_papers_adam_not_rmsprop():
    cfg = TrainConfig(loss="wgan", critic_norm="spectral", image_size=28, channels=1).resolved()
    assert (cfg.optimizer, cfg.lr, cfg.betas, cfg.n_critic) == ("adam", 1e-4, (0.0, 0.9), 5)
    generator, critic = build_generator(cfg), build_critic(cfg)
    assert all(isinstance(o, torch.optim.Adam) for o in build_optimizers(cfg, generator, critic))
    clipped = TrainConfig(loss="wgan", image_size=28, channels=1).resolved()  # the clipped critic keeps RMSProp
    assert (clipped.optimizer, clipped.lr) == ("rmsprop", 5e-5)
