"""One training step: n_critic critic updates, then one generator update.

The step works on plain modules or on DistributedDataParallel-wrapped ones:

* fakes for the critic are drawn from the *unwrapped* generator under
  ``no_grad`` (no DDP bookkeeping for a forward that is never backpropagated);
* a critic without batch norm sees real and fake samples in one forward and the
  interpolates in a second one (through the unwrapped critic, see critic_update), and
  the critic loss, penalty included, is backpropagated once;
* a batch-norm critic (wgan, gan) sees real and fake batches in separate
  forward/backward passes, as in the WGAN reference code, so that batch
  statistics are never mixed;
* the generator update scores fakes with the unwrapped critic and
  backpropagates into the generator's parameters only;
* with ``--augment diffaug`` every image the critic sees, real or fake, in both updates, is
  augmented first (`wgan.diffaugment`; the penalty's interpolates lie between the augmented
  batches, see there why);
* the learning-rate schedulers (`build_schedulers`) step once per generator step;
* with ``--gp-every K`` (wgan-gp) the penalty, its interpolates' forward and its double
  backward are taken on every K-th critic update only, weighted lambda * K (`TrainStep.critic_updates`
  counts the updates, every rank alike, and is checkpointed).

Statistics are returned as detached tensors: nothing here calls ``.item()``,
so the host synchronises only where the caller chooses to (logging intervals).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from wgan import diffaugment, losses, precision
from wgan.config import TrainConfig, augment_policy


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


def scores_and_logits(output) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A critic's output as fp32 (scores, class logits or None): an auxiliary-classifier
    critic returns both, every other critic scores only."""
    if isinstance(output, tuple):
        return output[0].float(), output[1].float()
    return output.float(), None


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def build_optimizers(cfg: TrainConfig, generator: nn.Module, critic: nn.Module, fused: bool | None = None):
    """RMSProp for wgan (Arjovsky et al. 2017: momentum-based optimisers made the
    critic unstable), Adam for wgan-gp and gan.

    ``fused`` (Adam): one kernel updates every parameter, instead of a few small ops per
    parameter tensor; the same update up to float rounding (tests/test_precision.py). None:
    fused on a CUDA GPU, where PyTorch's documentation calls it the fastest; not on a CPU,
    where it measured 0.94-0.98x the default at 28-64 px (benchmarks/RESULTS-issue32.md)."""
    if cfg.optimizer == "rmsprop":
        return (torch.optim.RMSprop(generator.parameters(), lr=cfg.lr),
                torch.optim.RMSprop(critic.parameters(), lr=cfg.lr))
    if fused is None:
        fused = next(generator.parameters()).device.type == "cuda"
    return (torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas, fused=fused),
            torch.optim.Adam(critic.parameters(), lr=cfg.lr, betas=cfg.betas, fused=fused))


def state_in_layout(optimizer: torch.optim.Optimizer) -> None:
    """Put an optimizer's state tensors in the memory layout of their parameters. A loaded state keeps
    the layout it was saved in, and the fused Adam kernel reads a state tensor as if laid out like
    its parameter: a channels_last parameter with a contiguous state would be updated from the
    wrong elements (tests/test_precision.py)."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def build_schedulers(cfg: TrainConfig, *optimizers: torch.optim.Optimizer) -> tuple[LambdaLR, ...]:
    """One LambdaLR per optimizer, stepped after each generator step: a constant factor 1
    (``--lr-decay none``), or ``linear``: the lr of generator step k + 1 (k done) is
    lr * max(0, 1 - k / steps), reaching 0 at the end (Gulrajani et al. 2017, gan_cifar_resnet.py:
    ``decay = max(0., 1. - iteration / ITERS)``, for the generator's and the critic's Adam alike).
    A run resumed with more ``--steps`` decays over its new length from the step it is at."""
    steps = cfg.steps
    if cfg.lr_decay == "linear":
        def factor(k: int) -> float:
            return max(0.0, 1.0 - k / steps)
    else:
        def factor(k: int) -> float:
            return 1.0
    return tuple(LambdaLR(optimizer, factor) for optimizer in optimizers)


class TrainStep:
    def __init__(self, cfg: TrainConfig, generator: nn.Module, critic: nn.Module,
                 g_optimizer: torch.optim.Optimizer, d_optimizer: torch.optim.Optimizer, *,
                 precision_mode: str = "auto", schedulers: Sequence[LRScheduler] = ()):
        """``precision_mode``: a `wgan.config.PRECISIONS` value (a run setting: `RunSettings.precision`).
        ``schedulers`` (`build_schedulers`) step once at the end of every call."""
        self.cfg = cfg
        self.generator, self.critic = generator, critic
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.schedulers = tuple(schedulers)
        self.policy = augment_policy(cfg.augment)
        # --critic-norm spectral bounds the critic's layers; clipping (wgan) would fight it.
        self.clip = cfg.loss == "wgan" and cfg.critic_norm != "spectral"
        self.separate_passes = has_batch_norm(unwrap(critic))
        self._g_params = [p for p in unwrap(generator).parameters() if p.requires_grad]
        device = next(unwrap(generator).parameters()).device
        self.precision = precision.effective(precision_mode, device)
        # The batches' layout, the networks' (`precision.memory_format`: the caller converts the
        # networks, before any DDP wrapper is made, as `pipelines.train_worker` does).
        self.memory_format = precision.memory_format(self.precision, device)
        self._autocast = lambda: precision.autocast(self.precision, device)
        # fp16 only: dynamic loss scaling, one scaler per optimizer; pass-throughs otherwise.
        self.d_scaler = precision.grad_scaler(self.precision, device)
        self.g_scaler = precision.grad_scaler(self.precision, device)
        # Critic updates taken so far: the lazy penalty's clock. It advances identically on every
        # DDP rank (each takes the same updates), and a restore sets it from the checkpoint.
        self.critic_updates = 0
        self._last_penalty: torch.Tensor | None = None  # reported on the updates that skip it

    @staticmethod
    def _loss_scale(scaler: torch.amp.GradScaler, like: torch.Tensor) -> torch.Tensor | None:
        """The scaler's current scale as a tensor (no host sync), or None when it is disabled."""
        return scaler.scale(like.new_ones((), dtype=torch.float32)) if scaler.is_enabled() else None

    def _seen(self, images: torch.Tensor) -> torch.Tensor:
        """What the critic is shown of ``images``: T(images) with --augment, else the images."""
        return diffaugment.augment(images, self.policy) if self.policy else images

    def _latents(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randn(n, self.cfg.z_dim, device=device)

    def _random_labels(self, n: int, device: torch.device) -> torch.Tensor | None:
        if not self.cfg.num_classes:
            return None
        return torch.randint(0, self.cfg.num_classes, (n,), device=device)

    def critic_update(self, real: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        cfg, loss = self.cfg, self.cfg.loss
        n = real.shape[0]
        if real.dim() == 4:  # images (an MLP's points have no layout); a no-op when they are so already
            real = real.contiguous(memory_format=self.memory_format)
        with torch.no_grad(), self._autocast():
            fake = unwrap(self.generator)(self._latents(n, real.device), labels).float()
        self.d_optimizer.zero_grad(set_to_none=True)
        penalty = real.new_zeros(())
        if self.separate_passes:
            with self._autocast():
                real_scores, real_logits = scores_and_logits(self.critic(self._seen(real), labels))
            loss_real = losses.critic_loss_real(loss, real_scores)
            if real_logits is not None:
                class_cost = losses.class_loss(real_logits, labels)
                loss_real = loss_real + losses.AUX_CRITIC_WEIGHT * class_cost
            self.d_scaler.scale(loss_real).backward()
            with self._autocast():
                fake_scores, fake_logits = scores_and_logits(self.critic(self._seen(fake), labels))
            loss_fake = losses.critic_loss_fake(loss, fake_scores)
            if fake_logits is not None:
                # The classifier head learns from real images only; this zero term marks its
                # parameters used in this pass too, which DistributedDataParallel requires.
                loss_fake = loss_fake + 0.0 * fake_logits.sum()
            self.d_scaler.scale(loss_fake).backward()
            total = loss_real.detach() + loss_fake.detach()
        else:
            both = None if labels is None else torch.cat([labels, labels])
            seen = self._seen(torch.cat([real, fake]))
            with self._autocast():
                scores, logits = scores_and_logits(self.critic(seen, both))
            real_scores, fake_scores = scores.split(n)
            lazy_now = loss == "wgan-gp" and self.critic_updates % cfg.gp_every == 0
            if lazy_now:
                # The interpolates get a forward of their own, through the unwrapped critic:
                # the penalty's gradient (create_graph) and its double backward then run over
                # n samples, not over all 3n of a joint batch (measured: a joint forward made
                # the step 0.63-0.67x the plain loop's speed). DDP stays correct: the penalty's
                # parameter gradients reach the same parameters, and DDP's hooks fire on
                # each parameter's accumulated gradient once, in the one backward below.
                # Between the images the critic scored: augmented ones with --augment (wgan.diffaugment).
                x_hat = losses.interpolates(*seen.split(n))
                with self._autocast():
                    hat_scores, _ = scores_and_logits(unwrap(self.critic)(x_hat, labels))
                # x_hat is fp32, so its gradient (and the norm in the penalty) is fp32 too.
                penalty = losses.gradient_penalty(hat_scores, x_hat, self._loss_scale(self.d_scaler, real))
                self._last_penalty = penalty.detach()
            # lambda * K on the updates that take it: the same expected penalty gradient (K = 1: the paper's)
            total = losses.critic_loss(loss, real_scores, fake_scores) + cfg.lambda_gp * cfg.gp_every * penalty
            if logits is not None:  # the auxiliary classifier learns from real images only
                class_cost = losses.class_loss(logits[:n], labels)
                total = total + losses.AUX_CRITIC_WEIGHT * class_cost
            self.d_scaler.scale(total).backward()
            total = total.detach()
        self.d_scaler.step(self.d_optimizer)  # skipped by fp16's scaler when a gradient overflowed
        self.d_scaler.update()
        self.critic_updates += 1
        if self.clip:
            losses.clip_weights(unwrap(self.critic), cfg.clip)
        stats = {} if self.cfg.conditioning != "aux" or labels is None else {"loss/critic_class": class_cost.detach()}
        if self.d_scaler.is_enabled():
            stats["amp/loss_scale"] = self._loss_scale(self.d_scaler, real)
        return {
            **stats,
            "loss/critic": total,
            # E[D(real)] - E[D(fake)]: a W1 estimate under wgan and wgan-gp only (`losses.gap_metric`)
            losses.gap_metric(loss): losses.wasserstein_estimate(real_scores.detach(), fake_scores.detach()),
            # the latest penalty taken (with --gp-every, the updates between report the last one)
            "gradient_penalty": penalty.detach() if self._last_penalty is None else self._last_penalty,
        }

    def generator_update(self, n: int, device: torch.device) -> dict[str, torch.Tensor]:
        labels = self._random_labels(n, device)
        self.g_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            scores, logits = scores_and_logits(
                unwrap(self.critic)(self._seen(self.generator(self._latents(n, device), labels)), labels))
        g_loss = losses.generator_loss(self.cfg.loss, scores)
        if logits is not None:
            g_loss = g_loss + losses.AUX_GENERATOR_WEIGHT * losses.class_loss(logits, labels)
        # inputs=: gradients reach the generator only; the critic's stay untouched.
        self.g_scaler.scale(g_loss).backward(inputs=self._g_params)
        self.g_scaler.step(self.g_optimizer)
        self.g_scaler.update()
        return {"loss/generator": g_loss.detach()}

    def __call__(self, real_batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]]) -> dict[str, torch.Tensor]:
        """Run one generator step on ``n_critic`` real batches; returns detached stats."""
        stats: dict[str, torch.Tensor] = {}
        count = 0
        for real, labels in real_batches:
            stats = self.critic_update(real, labels if self.cfg.num_classes else None)
            count += 1
        if count != self.cfg.n_critic:
            raise ValueError(f"expected {self.cfg.n_critic} real batches, got {count}")
        stats.update(self.generator_update(real.shape[0], real.device))
        for scheduler in self.schedulers:
            scheduler.step()
        return stats
