"""DiffAugment (`wgan.diffaugment`, Zhao et al. 2020): the policy's parsing, the ops, gradients through
them into the generator, and which images the critic is shown (the penalty's interpolates included)."""

from __future__ import annotations

import pytest
import torch

from wgan import diffaugment, losses
from wgan.config import (
    AUGMENT_OPS,
    DEFAULT_AUGMENT_POLICY,
    ConfigError,
    TrainConfig,
    augment_policy,
)
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers

pytestmark = pytest.mark.usefixtures("one_thread")


def config(**overrides) -> TrainConfig:
    base = {"image_size": 28, "channels": 1, "width": 8, "z_dim": 16, "batch": 6, "n_critic": 1}
    return TrainConfig(**{**base, **overrides}).resolved()


def test_policies_parse_and_bad_ones_are_one_line_naming_the_valid_ops():
    assert augment_policy("none") == ()
    assert augment_policy("diffaug") == DEFAULT_AUGMENT_POLICY == ("color", "translation", "cutout")
    assert augment_policy("diffaug:translation,cutout") == ("translation", "cutout")
    assert tuple(diffaugment._OPS) == AUGMENT_OPS  # every op parsed has an implementation
    for bad, says in (("diffaug:zoom", "unknown op 'zoom': valid ops are color, translation, cutout"),
                      ("diffaug:color,color", "an op named twice: valid ops are color, translation, cutout"),
                      ("diffaug:", "unknown op '': valid ops are"),
                      ("flip", ("use none, diffaug, or diffaug:OPS with OPS a comma-separated list of color, "
                                "translation, cutout"))):
        with pytest.raises(ConfigError, match=r"^[^\n]*$") as raised:  # one line
            config(augment=bad)  # TrainConfig.validate refuses it before anything runs
        assert says in str(raised.value), str(raised.value)


def test_translation_moves_each_image_by_at_most_an_eighth_filling_zeros():
    torch.manual_seed(0)
    x = torch.arange(1, 1 + 32 * 32, dtype=torch.float32).view(1, 1, 32, 32).repeat(16, 1, 1, 1)
    shifted = diffaugment.augment(x, ("translation",))
    seen = set()
    for out in shifted:
        matches = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                   if torch.equal(out, _shift_reference(x[0], dy, dx))]
        assert len(matches) == 1  # the image moved as a whole, zeros where nothing came in
        seen.add(matches[0])
    assert len(seen) > 1  # drawn per sample


def _shift_reference(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_cutout_zeroes_one_square_of_half_the_side_cut_at_the_border():
    torch.manual_seed(0)
    holes = diffaugment.augment(torch.ones(64, 1, 28, 28), ("cutout",)) == 0
    for hole in holes[:, 0]:
        rows, cols = hole.any(1).nonzero(), hole.any(0).nonzero()
        height, width = len(rows), len(cols)
        assert 7 <= height <= 14 and 7 <= width <= 14  # the 14 x 14 square, at least half inside
        assert hole.sum() == height * width  # one rectangle
        assert rows.max() - rows.min() + 1 == height and cols.max() - cols.min() + 1 == width
    assert (holes.sum((1, 2, 3)) == 14 * 14).any()  # whole squares where it fits


def test_gradients_reach_the_generator_through_the_augmentation():
    for policy in (DEFAULT_AUGMENT_POLICY, ("translation", "cutout")):
        x = torch.rand(4, 3, 16, 16, requires_grad=True)
        diffaugment.augment(x, policy).sum().backward()
        assert x.grad.abs().sum() > 0
    assert ((x.grad == 0) | (x.grad == 1)).all() and (x.grad == 0).any()  # shifted out or cut: no gradient
    grads = {}
    for augment in ("none", "diffaug"):
        cfg = config(augment=augment)
        torch.manual_seed(0)
        G, D = build_generator(cfg), build_critic(cfg)
        step = TrainStep(cfg, G, D, *build_optimizers(cfg, G, D), precision_mode="fp32")
        step.generator_update(6, torch.device("cpu"))
        grads[augment] = torch.cat([p.grad.flatten() for p in G.parameters()])
    assert grads["diffaug"].abs().sum() > 0
    assert not torch.allclose(grads["diffaug"], grads["none"])  # the generator learned through T(G(z))


class _Shown:
    """Records every batch the critic is shown."""

    def __init__(self, critic: torch.nn.Module):
        self.batches: list[torch.Tensor] = []
        critic.register_forward_pre_hook(lambda module, args: self.batches.append(args[0].detach().clone()))


def _cut(batch: torch.Tensor) -> torch.Tensor:
    """Per sample: does it hold the exact zeros of a cutout (at least a 7 x 7 corner of the square)?"""
    return (batch == 0).flatten(1).sum(1) >= 49


def test_the_critic_sees_only_augmented_images_and_the_penalty_lies_between_the_augmented_batches(monkeypatch):
    """wgan-gp with --augment diffaug:cutout. Real images are in [0.1, 1] and fakes are tanh outputs,
    so exact zeros are cutout's: every batch the critic scores has them in every sample. The
    interpolates are drawn between the augmented real and the augmented fake batch the critic
    scored, and shown as they are (no second draw): see wgan.diffaugment on why."""
    cfg = config(loss="wgan-gp", augment="diffaug:cutout")
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_critic(cfg)
    shown = _Shown(D)
    ends = []
    original = losses.interpolates

    def interpolates(real, fake):
        ends.append((real.detach().clone(), fake.detach().clone()))
        return original(real, fake)

    monkeypatch.setattr(losses, "interpolates", interpolates)
    real = 0.1 + 0.9 * torch.rand(6, 1, 28, 28)
    TrainStep(cfg, G, D, *build_optimizers(cfg, G, D), precision_mode="fp32")([(real, None)])
    scored, x_hat, generated = shown.batches  # critic update (real+fake, interpolates), generator update
    assert _cut(scored).all() and _cut(generated).all()
    (aug_real, aug_fake), = ends
    assert torch.equal(torch.cat([aug_real, aug_fake]), scored)  # between the augmented batches
    assert not torch.equal(aug_real, real)
    eps = (x_hat - aug_fake).flatten(1).sum(1) / (aug_real - aug_fake).flatten(1).sum(1)
    torch.testing.assert_close(x_hat, eps.view(-1, 1, 1, 1) * aug_real + (1 - eps.view(-1, 1, 1, 1)) * aug_fake)


def test_a_batch_norm_critic_sees_augmented_real_and_fake_batches():
    cfg = config(loss="gan", augment="diffaug:cutout")  # gan's critic keeps batch norm: separate passes
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_critic(cfg)
    shown = _Shown(D)
    step = TrainStep(cfg, G, D, *build_optimizers(cfg, G, D), precision_mode="fp32")
    assert step.separate_passes
    step([(0.1 + 0.9 * torch.rand(6, 1, 28, 28), None)])
    assert len(shown.batches) == 3 and all(_cut(batch).all() for batch in shown.batches)
