"""The WGAN-GP paper's ResNet (`wgan.resnet`): the paper's layout at 32 px, every supported size, both
conditionings, and the per-architecture width default."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wgan.config import IMAGE_SIZES, ConfigError, TrainConfig
from wgan.networks import build_critic, build_generator
from wgan.resnet import ResNetCritic, ResNetGenerator, critic_halvings

pytestmark = pytest.mark.usefixtures("one_thread")


def resnet(size: int, channels: int = 3, **overrides) -> TrainConfig:
    return TrainConfig(arch="resnet", width=8, z_dim=16, image_size=size, channels=channels, **overrides).resolved()


def test_the_32_px_networks_are_the_papers():
    """gan_cifar_resnet.py: linear to 4x4, three upsampling blocks, BN-ReLU-conv-tanh; critic: the
    optimised block, one downsampling block, two blocks at 8 x 8, ReLU, mean pool, linear."""
    cfg = TrainConfig(arch="resnet", image_size=32, channels=3).resolved()
    assert cfg.width == 128  # DIM_G = DIM_D = 128
    G, D = build_generator(cfg), build_critic(cfg)
    assert isinstance(G, ResNetGenerator) and isinstance(D, ResNetCritic)
    assert G.project[0].out_features == 128 * 4 * 4 and len(G.blocks) == 3
    assert [type(m) for m in G.out] == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.Tanh]
    blocks = [type(b).__name__ for b in D.features[:4]]
    assert blocks == ["_OptimizedBlock", "_CriticBlock", "_CriticBlock", "_CriticBlock"]
    assert [b.down for b in D.features[1:4]] == [True, False, False]
    assert isinstance(D.features[3].shortcut, nn.Identity)  # identity skip at equal widths
    sizes = []
    hook = D.features[3].register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    D(torch.zeros(2, 3, 32, 32))
    hook.remove()
    assert sizes == [8]
    # batch norm in the generator only (NORMALIZATION_G True, NORMALIZATION_D False): the critic
    # norm is --critic-norm's, layer norm here (wgan-gp's default)
    assert any(isinstance(m, nn.BatchNorm2d) for m in G.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in D.modules())


@pytest.mark.parametrize("size", IMAGE_SIZES)
@pytest.mark.parametrize("conditioning", [None, "projection", "aux"])
def test_generator_and_critic_at_every_size(size, conditioning):
    extra = {} if conditioning is None else {"conditional": True, "num_classes": 5, "conditioning": conditioning}
    cfg = resnet(size, **extra)
    G, D = build_generator(cfg), build_critic(cfg)
    labels = None if conditioning is None else torch.tensor([0, 4, 2])
    images = G(torch.randn(3, 16), labels)
    assert images.shape == (3, 3, size, size)
    assert images.abs().max() <= 1  # tanh
    out = D(images, labels)
    if conditioning == "aux":
        score, logits = out
        assert score.shape == (3,) and logits.shape == (3, 5)
    else:
        assert out.shape == (3,)
    if conditioning == "projection":  # the label changes the score
        assert not torch.allclose(D(images, labels), D(images, torch.tensor([1, 1, 1])))


def test_every_block_is_residual():
    """With a block's last conv zeroed, its output is its shortcut's alone (x2 / pooled, 1x1 conv or identity)."""
    torch.manual_seed(0)
    G, D = build_generator(resnet(32)), build_critic(resnet(32))
    x = torch.randn(2, 8, 8, 8)
    for block, shortcut in ((G.blocks[0], lambda x, b: b.shortcut(F.interpolate(x, scale_factor=2))),
                            (D.features[1], lambda x, b: F.avg_pool2d(b.shortcut(x), 2)),
                            (D.features[2], lambda x, b: x),
                            (D.features[0], lambda x, b: b.shortcut(F.avg_pool2d(x, 2)))):
        block.eval()
        inputs = torch.randn(2, 3, 8, 8) if block is D.features[0] else x
        with torch.no_grad():
            full = block(inputs)
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
            torch.testing.assert_close(block(inputs), shortcut(inputs, block))
            assert not torch.allclose(full, block(inputs))  # the residual path added something


def test_the_critic_halves_until_at_most_8_px():
    assert {s: critic_halvings(s) for s in IMAGE_SIZES} == {28: 2, 32: 2, 48: 3, 64: 3, 96: 4}


def test_one_channel_and_the_width_default():
    assert resnet(28, channels=1).width == 8  # given
    assert TrainConfig(arch="resnet", image_size=28, channels=1).resolved().width == 128
    assert TrainConfig(arch="dcgan", image_size=28, channels=1).resolved().width == 64
    G = build_generator(resnet(28, channels=1))
    assert G(torch.randn(2, 16)).shape == (2, 1, 28, 28)


def test_an_unsupported_size_is_one_line_naming_the_sizes():
    with pytest.raises(ConfigError, match=r"^image size 40 is not supported by the resnet networks: .*28, 32, 48, 64, 96$"):
        resnet(40)
