"""Typed training configuration, validated once at the edge.

Defaults per loss follow the papers exactly:

* ``wgan``: RMSProp, lr 5e-5, clip c = 0.01, batch 64, n_critic 5
  (Arjovsky, Chintala, Bottou 2017, "Wasserstein GAN", Algorithm 1).
* ``wgan-gp``: Adam, lr 1e-4, betas (0, 0.9), lambda 10, n_critic 5, no BatchNorm
  in the critic (Gulrajani et al. 2017, "Improved Training of Wasserstein GANs",
  Algorithm 1 and Section 4).
* ``gan``: the non-saturating GAN loss (Goodfellow et al. 2014) with the DCGAN
  optimiser, Adam lr 2e-4, betas (0.5, 0.999), one critic step per generator step
  (Radford, Metz, Chintala 2016).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from wgan.errors import UserError

LOSSES = ("wgan-gp", "wgan", "gan")
ARCHS = ("dcgan", "mlp")
CRITIC_NORMS = ("none", "layer", "batch")
IMAGE_SIZES = (28, 32, 64, 96)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CONDITIONINGS = ("projection", "aux")


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message is one line that says what to do."""


@dataclass(frozen=True)
class LossDefaults:
    optimizer: str
    lr: float
    betas: tuple[float, float]
    n_critic: int
    critic_norm: str


LOSS_DEFAULTS: dict[str, LossDefaults] = {
    # Arjovsky et al. 2017, Algorithm 1: alpha = 5e-5, c = 0.01, m = 64, n_critic = 5.
    # Their DCGAN critic keeps batch norm.
    "wgan": LossDefaults("rmsprop", 5e-5, (0.0, 0.0), 5, "batch"),
    # Gulrajani et al. 2017, Algorithm 1: lambda = 10, n_critic = 5, alpha = 1e-4,
    # beta1 = 0, beta2 = 0.9; Section 4 recommends layer norm in place of batch norm.
    "wgan-gp": LossDefaults("adam", 1e-4, (0.0, 0.9), 5, "layer"),
    # Radford et al. 2016 (DCGAN): Adam lr 2e-4, beta1 0.5; one D step per G step.
    "gan": LossDefaults("adam", 2e-4, (0.5, 0.999), 1, "batch"),
}


@dataclass
class TrainConfig:
    """Everything a training run needs; logged to MLflow whole as parameters.

    ``None`` for ``lr``, ``n_critic``, ``critic_norm`` or ``betas`` means "the
    paper's value for this loss" and is resolved by :meth:`resolved`.
    """

    loss: str = "wgan-gp"
    arch: str = "dcgan"
    width: int = 64
    z_dim: int = 128
    image_size: int | None = None  # None: taken from the prepared data's manifest
    channels: int | None = None
    steps: int = 2000
    batch: int = 64
    n_critic: int | None = None
    lr: float | None = None
    betas: tuple[float, float] | None = None
    lambda_gp: float = 10.0
    clip: float = 0.01
    critic_norm: str | None = None
    workers: int = 1
    gpu: bool = False
    seed: int = 0
    log_every: int = 25
    sample_every: int = 250
    checkpoint_every: int = 250
    # --conditional: generator and critic take the class label; num_classes is then the
    # data's class count, set from its manifest. The critic uses the label through
    # "projection" (Miyato and Koyama 2018) or "aux", an auxiliary classifier head (Odena et
    # al. 2017), as in the WGAN-GP paper's conditional CIFAR-10 model. Projection is the
    # default by measurement: Fashion-MNIST, the main job's settings (1500 steps), 10,000
    # samples in the project classifier's features: projection class accuracy 0.82,
    # intra-class FD 22.9, FID 16.7; aux 0.22, 170.4, 33.3.
    conditional: bool = False
    num_classes: int = 0
    conditioning: str = "projection"
    # Exponential moving average of the generator's weights (0: off; e.g. 0.999): the
    # averaged generator is what grids, the objective and the logged model sample from.
    g_ema: float = 0.0
    # bf16: autocast the step's forward passes to bfloat16; auto: bf16 where the device
    # has bf16 arithmetic (a CUDA GPU that supports it, a CPU with avx512_bf16/amx_bf16).
    # fp16 (GPUs only): float16 autocast with dynamic loss scaling, the penalty's inner
    # gradient scaled too (wgan.losses.gradient_penalty).
    precision: str = "auto"

    def resolved(self) -> "TrainConfig":
        """Return a copy with every per-loss default filled in and all values checked."""
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        d = LOSS_DEFAULTS[self.loss]
        cfg = dataclasses.replace(
            self,
            lr=d.lr if self.lr is None else self.lr,
            betas=d.betas if self.betas is None else tuple(self.betas),
            n_critic=d.n_critic if self.n_critic is None else self.n_critic,
            critic_norm=d.critic_norm if self.critic_norm is None else self.critic_norm,
        )
        cfg.validate()
        return cfg

    @property
    def optimizer(self) -> str:
        return LOSS_DEFAULTS[self.loss].optimizer

    @property
    def per_worker_batch(self) -> int:
        return self.batch // self.workers

    def validate(self) -> None:
        if self.image_size is None or self.channels is None:
            raise ConfigError("image size and channels are unknown: give --data (a prepared dataset) so they can be read from its manifest")
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        if self.image_size not in IMAGE_SIZES and self.arch == "dcgan":
            raise ConfigError(
                f"image size {self.image_size} is not supported by the DCGAN networks: "
                f"prepare the data with --size one of {', '.join(map(str, IMAGE_SIZES))}"
            )
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if self.critic_norm not in CRITIC_NORMS:
            raise ConfigError(
                f"unknown critic norm {self.critic_norm!r}: choose one of {', '.join(CRITIC_NORMS)}"
            )
        if self.loss == "wgan-gp" and self.critic_norm == "batch":
            raise ConfigError(
                "batch norm in the critic is refused with wgan-gp: the gradient penalty is "
                "per sample and batch norm couples samples (Gulrajani et al. 2017, Sec. 4); "
                "use --critic-norm layer or none"
            )
        checks = [
            (self.lambda_gp >= 0, f"--lambda-gp must be >= 0, got {self.lambda_gp}"),
            (self.clip > 0, f"--clip must be > 0, got {self.clip}"),
            (self.n_critic is not None and self.n_critic >= 1,
             f"--n-critic must be >= 1, got {self.n_critic}"),
            (self.lr is not None and self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.width >= 1, f"--width must be >= 1, got {self.width}"),
            (self.z_dim >= 1, f"z_dim must be >= 1, got {self.z_dim}"),
            (self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
            (self.batch >= 1, f"--batch must be >= 1, got {self.batch}"),
            (self.batch % self.workers == 0,
             f"--batch {self.batch} does not split over {self.workers} workers: "
             f"use a batch that is a multiple of --workers"),
            (self.conditioning in CONDITIONINGS,
             f"unknown conditioning {self.conditioning!r}: choose one of {', '.join(CONDITIONINGS)}"),
            (0 <= self.g_ema < 1, f"--g-ema must be in [0, 1) (0: off), got {self.g_ema}"),
            (self.precision in PRECISIONS,
             f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"),
            (self.precision != "fp16" or self.gpu,
             "--precision fp16 runs on GPUs only (--gpu): CPUs emulate fp16; use bf16 or fp32"),
            (self.log_every >= 1 and self.sample_every >= 1 and self.checkpoint_every >= 1,
             "log/sample/checkpoint intervals must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["betas"] is not None:
            out["betas"] = list(out["betas"])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}: valid keys are {', '.join(sorted(names))}")
        values = dict(values)
        if values.get("betas") is not None:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
