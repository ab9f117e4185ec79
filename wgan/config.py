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
* ``hinge``: the hinge loss (Lim and Ye 2017; Miyato et al. 2018, Eq. 16-17) with a
  spectrally normalised critic and the SN-GAN authors' CIFAR-10 optimiser: Adam lr 2e-4,
  betas (0, 0.9), n_critic 5 (pfnet-research/sngan_projection, configs/sn_cifar10*.yml:
  ``adam: alpha 0.0002, beta1 0.0, beta2 0.9``, ``n_dis: 5``, ``loss_type: hinge``).

The network width default is per architecture (ARCH_WIDTHS): the DCGAN networks' 64, the
WGAN-GP paper's ResNet's 128 (gan_cifar_resnet.py: DIM_G = DIM_D = 128).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from wgan.errors import UserError
from wgan.knobs import knob

LOSSES = ("wgan-gp", "wgan", "gan", "hinge")
ARCHS = ("dcgan", "resnet", "mlp")
CRITIC_NORMS = ("none", "layer", "batch", "spectral")
IMAGE_SIZES = (28, 32, 48, 64, 96)
LR_DECAYS = ("none", "linear")
# Base width of each architecture when --width is not given: Radford et al. 2016's DCGAN
# (the first critic layer's channels; the MLP ignores it: 512 units); the WGAN-GP ResNet's
# DIM_G = DIM_D = 128 (Gulrajani et al. 2017, gan_cifar_resnet.py).
ARCH_WIDTHS = {"dcgan": 64, "resnet": 128, "mlp": 64}
# DiffAugment's ops (Zhao et al. 2020; `wgan.diffaugment`) and what --augment diffaug stands for:
# all three, the authors' recommendation for small datasets (their README).
AUGMENT_OPS = ("color", "translation", "cutout")
DEFAULT_AUGMENT_POLICY = AUGMENT_OPS
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CONDITIONINGS = ("projection", "aux")


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message is one line that says what to do."""


def augment_policy(text: str) -> tuple[str, ...]:
    """The DiffAugment ops of an ``--augment`` value: ``none`` -> (), ``diffaug`` -> the default
    policy, ``diffaug:a,b`` -> (a, b); a ConfigError naming the valid ops otherwise."""
    if text == "none":
        return ()
    if text == "diffaug":
        return DEFAULT_AUGMENT_POLICY
    head, sep, ops = text.partition(":")
    if head != "diffaug" or not sep:
        raise ConfigError(f"unknown --augment {text!r}: use none, diffaug, or diffaug:OPS with OPS a comma-separated "
                          f"list of {', '.join(AUGMENT_OPS)}")
    names = tuple(op.strip() for op in ops.split(","))
    unknown = [op for op in names if op not in AUGMENT_OPS]
    if unknown or len(set(names)) != len(names):
        problem = f"unknown op {unknown[0]!r}" if unknown else "an op named twice"
        raise ConfigError(f"--augment {text!r} has {problem}: valid ops are {', '.join(AUGMENT_OPS)} "
                          f"(e.g. diffaug:translation,cutout)")
    return names


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
    # Miyato et al. 2018 (SN-GAN), their CIFAR-10 code (pfnet-research/sngan_projection,
    # configs/sn_cifar10_unconditional.yml): hinge loss, Adam alpha 2e-4, beta1 0, beta2 0.9,
    # n_dis 5, every critic layer spectrally normalised.
    "hinge": LossDefaults("adam", 2e-4, (0.0, 0.9), 5, "spectral"),
}
# --loss wgan --critic-norm spectral: a Wasserstein critic bounded by spectral normalisation alone
# (no clipping, no penalty) trains with the WGAN-GP paper's Adam (Gulrajani et al. 2017,
# Algorithm 1: alpha 1e-4, beta1 0, beta2 0.9, n_critic 5). Arjovsky et al. chose RMSProp
# because momentum made their *clipped* critic unstable; without clipping that reason is gone,
# and spectrally normalised critics are trained with Adam (Miyato et al. 2018).
SPECTRAL_WGAN_DEFAULTS = LossDefaults("adam", 1e-4, (0.0, 0.9), 5, "spectral")


def loss_defaults(loss: str, critic_norm: str | None) -> LossDefaults:
    """The papers' settings for ``loss``, with a spectrally normalised WGAN critic's (Adam) above."""
    if loss == "wgan" and critic_norm == "spectral":
        return SPECTRAL_WGAN_DEFAULTS
    return LOSS_DEFAULTS[loss]


def _per_loss(name: str) -> str:
    """Help text for a per-loss default: the papers' value for each loss."""
    def text(value: Any) -> str:
        if isinstance(value, tuple):
            return " ".join(map(str, value))
        if isinstance(value, float) and 0 < abs(value) < 1e-3:
            return f"{value:.0e}".replace("e-0", "e-")
        return str(value)
    shown = ", ".join(f"{loss} {text(getattr(d, name))}" for loss, d in LOSS_DEFAULTS.items()
                      if name != "betas" or d.optimizer == "adam")
    if name in ("lr", "betas"):  # a spectrally normalised WGAN critic takes Adam (SPECTRAL_WGAN_DEFAULTS)
        shown += f", wgan with --critic-norm spectral {text(getattr(SPECTRAL_WGAN_DEFAULTS, name))}"
    return shown


@dataclass
class TrainConfig:
    """What defines a run: its hyperparameters, logged to MLflow as params and frozen for the run.

    ``None`` for ``lr``, ``n_critic``, ``critic_norm`` or ``betas`` means "the paper's
    value for this loss" (LOSS_DEFAULTS), for ``width`` "the architecture's" (ARCH_WIDTHS),
    and is resolved by :meth:`resolved`. How a run
    is executed (workers, devices, intervals, storage) is `RunSettings`, which may differ
    when a run is resumed.
    """

    loss: str = knob("wgan-gp", f"objective: {', '.join(LOSSES)}",
                     cite="wgan: Arjovsky et al. 2017; wgan-gp: Gulrajani et al. 2017; gan: Goodfellow et al. 2014; "
                          "hinge: Lim and Ye 2017, Miyato et al. 2018")
    arch: str = knob("dcgan", f"generator and critic: {', '.join(ARCHS)}",
                     cite="dcgan: Radford et al. 2016, as in both WGAN papers; resnet: Gulrajani et al. 2017, "
                          "Appendix (CIFAR-10 ResNet); mlp: Arjovsky et al. 2017, Sec. 4.3")
    width: int | None = knob(None, "base channel width: the DCGAN critic's first layer, every ResNet block's",
                             cite="Radford et al. 2016; Gulrajani et al. 2017's ResNet: DIM_G = DIM_D = 128",
                             shown_default=", ".join(f"{a} {w}" for a, w in ARCH_WIDTHS.items() if a != "mlp"))
    z_dim: int = knob(128, "latent size", cite="Gulrajani et al. 2017, official code: 128")
    image_size: int | None = knob(None, "image side in pixels", cli=False, shown_default="the data's")
    channels: int | None = knob(None, "image channels", cli=False, shown_default="the data's")
    steps: int = knob(2000, "generator steps", on_resume=True)
    batch: int = knob(64, "global batch of real images per critic step; each of the --workers workers takes "
                          "batch/workers of it, and DDP averages their gradients, so a step equals one step at "
                          "the global batch (must divide evenly)", cite="m = 64: both papers' Algorithm 1")
    n_critic: int | None = knob(None, "critic steps per generator step",
                                cite="both WGAN papers' Algorithm 1: 5; hinge: Miyato et al. 2018's code",
                                shown_default=_per_loss("n_critic"))
    lr: float | None = knob(None, "learning rate",
                            cite="Algorithm 1 of each paper; DCGAN for gan; Miyato et al. 2018's code for hinge",
                            shown_default=_per_loss("lr"))
    betas: tuple[float, float] | None = knob(None, "Adam's beta1 beta2 (wgan-gp, gan, hinge)",
                                             cite="Gulrajani et al. 2017: (0, 0.9); Radford et al. 2016: (0.5, 0.999); "
                                                  "Miyato et al. 2018's code: (0, 0.9)",
                                             shown_default=_per_loss("betas"))
    lambda_gp: float = knob(10.0, "gradient penalty weight (wgan-gp)", cite="Gulrajani et al. 2017, Algorithm 1")
    # Lazy regularisation is Karras et al. 2020 ("Analyzing and Improving the Image Quality of
    # StyleGAN", sec. 3.1: R1 every 16 minibatches, weighted by the interval); applying it to the
    # WGAN-GP penalty is our use of their idea. K = 1 is the WGAN-GP paper's algorithm exactly.
    gp_every: int = knob(1, "take the gradient penalty on every K-th critic update only, weighted lambda * K so its "
                            "expected gradient is unchanged (wgan-gp; 1: every update, as the paper)",
                         cite="Karras et al. 2020, sec. 3.1 (lazy regularisation); 1: Gulrajani et al. 2017")
    clip: float = knob(0.01, "critic weight clip c (wgan)", cite="Arjovsky et al. 2017, Algorithm 1")
    critic_norm: str | None = knob(None, f"critic normalisation: {', '.join(CRITIC_NORMS)} (batch refused with "
                                         f"wgan-gp; spectral: every critic layer, and no weight clipping with wgan)",
                                   cite="Gulrajani et al. 2017, Sec. 4: layer norm with the penalty; spectral: "
                                        "Miyato et al. 2018",
                                   shown_default=_per_loss("critic_norm"))
    lr_decay: str = knob("none", f"learning-rate schedule of both optimizers: {' or '.join(LR_DECAYS)} (linear: "
                                 f"from --lr down to 0 at the last step)",
                         cite="Gulrajani et al. 2017, gan_cifar_resnet.py: decay = max(0, 1 - iteration/ITERS)")
    augment: str = knob("none", "differentiable augmentation of every image the critic sees: none, diffaug "
                                f"(= diffaug:{','.join(DEFAULT_AUGMENT_POLICY)}) or diffaug:OPS with OPS from "
                                f"{', '.join(AUGMENT_OPS)}",
                        cite="Zhao et al. 2020, DiffAugment")
    seed: int = knob(0, "random seed")
    # Projection is the default by measurement: Fashion-MNIST, the main job's settings (1500
    # steps), 10,000 samples in the project classifier's features: projection class accuracy
    # 0.82, intra-class FD 22.9, FID 16.7; aux 0.22, 170.4, 33.3.
    conditional: bool = knob(False, "class-conditional generator and critic (labelled data)", flag="--conditional")
    num_classes: int = knob(0, "classes of a conditional run", cli=False, shown_default="the data's")
    conditioning: str = knob("projection", "how a conditional critic uses the label: projection or aux "
                                           "(auxiliary classifier)",
                             cite="projection: Miyato and Koyama 2018; aux: Odena et al. 2017, as in the "
                                  "WGAN-GP paper's conditional CIFAR-10 model")
    g_ema: float = knob(0.0, "decay of a moving average of the generator, e.g. 0.999; it then samples "
                             "and is logged (0: off)", cite="Karras et al. 2018 (progressive GAN)")

    def resolved(self) -> "TrainConfig":
        """Return a copy with every per-loss default filled in and all values checked."""
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        d = loss_defaults(self.loss, self.critic_norm)
        cfg = dataclasses.replace(
            self,
            lr=d.lr if self.lr is None else self.lr,
            betas=d.betas if self.betas is None else tuple(self.betas),
            n_critic=d.n_critic if self.n_critic is None else self.n_critic,
            critic_norm=d.critic_norm if self.critic_norm is None else self.critic_norm,
            width=ARCH_WIDTHS.get(self.arch, ARCH_WIDTHS["dcgan"]) if self.width is None else self.width,
        )
        cfg.validate()
        return cfg

    @property
    def optimizer(self) -> str:
        return loss_defaults(self.loss, self.critic_norm).optimizer

    def validate(self) -> None:
        if self.image_size is None or self.channels is None:
            raise ConfigError("image size and channels are unknown: give --data (a prepared dataset) so they can be read from its manifest")
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        if self.image_size not in IMAGE_SIZES and self.arch != "mlp":
            raise ConfigError(
                f"image size {self.image_size} is not supported by the {self.arch} networks: "
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
            (0 <= self.lambda_gp < math.inf, f"--lambda-gp must be >= 0 and finite, got {self.lambda_gp}"),
            (0 < self.clip < math.inf, f"--clip must be > 0 and finite, got {self.clip}"),
            (self.gp_every >= 1, f"--gp-every must be >= 1, got {self.gp_every}"),
            (self.gp_every == 1 or self.loss == "wgan-gp",
             f"--gp-every {self.gp_every} spaces out the gradient penalty, which only --loss wgan-gp takes: "
             f"drop it, or use --loss wgan-gp"),
            (self.n_critic is not None and self.n_critic >= 1,
             f"--n-critic must be >= 1, got {self.n_critic}"),
            (self.lr is not None and 0 < self.lr < math.inf, f"--lr must be > 0 and finite, got {self.lr}"),
            (self.betas is not None and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"--betas takes two numbers in [0, 1) (Adam's beta1 beta2), got {' '.join(map(str, self.betas or ()))}"),
            (self.seed >= 0, f"--seed must be zero or positive, got {self.seed}"),
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.width >= 1, f"--width must be >= 1, got {self.width}"),
            (self.z_dim >= 1, f"--z-dim must be >= 1, got {self.z_dim}"),
            (self.batch >= 1, f"--batch must be >= 1, got {self.batch}"),
            (self.conditioning in CONDITIONINGS,
             f"unknown conditioning {self.conditioning!r}: choose one of {', '.join(CONDITIONINGS)}"),
            (0 <= self.g_ema < 1, f"--g-ema must be in [0, 1) (0: off), got {self.g_ema}"),
            (self.lr_decay in LR_DECAYS, f"unknown --lr-decay {self.lr_decay!r}: choose one of {', '.join(LR_DECAYS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        augment_policy(self.augment)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["betas"] is not None:
            out["betas"] = list(out["betas"])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        # Runs and checkpoints written before the split kept the run settings in the config too.
        values = {k: v for k, v in values.items() if k not in LEGACY_RUN_KEYS}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}: valid keys are {', '.join(sorted(names))}")
        values = dict(values)
        if values.get("betas") is not None:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Fields of TrainConfig before the run settings had their own object: still found in the
# config.json and checkpoints of older runs, and read there by `RunSettings.from_legacy`.
LEGACY_RUN_KEYS = ("workers", "gpu", "precision", "log_every", "sample_every", "checkpoint_every")


@dataclass
class RunSettings:
    """How a run is executed: the shape it runs on, its intervals, where it keeps checkpoints.

    Logged with the run (its params at the start, ``run_settings.json`` as they are now),
    and free to differ each time the run is resumed: `wganctl train --resume RUN --workers 8
    --gpu` continues a run on another shape and records the change in the run's
    ``wganctl.resumed_with`` tag, while the `TrainConfig` knobs are refused there. Where this
    process connects (``--address``) and what it prints are arguments of the call, like every
    stage's, not part of the run.
    """

    workers: int = knob(1, "data-parallel Ray Train workers")
    gpu: bool = knob(False, "one GPU per worker", flag="--gpu/--cpu")
    # bf16 measured 1.46x the fp32 loop at 28 px on a CPU with avx512_bf16; emulated (slower)
    # without it, hence "auto". fp16 scales the penalty's inner gradient too (wgan.losses).
    precision: str = knob("auto", "auto (bf16 where the hardware has it: a CUDA GPU that supports it, a CPU "
                                  "with avx512_bf16/amx_bf16), bf16, fp16 (GPUs only, with loss scaling) or fp32")
    log_every: int = knob(25, "steps between metric flushes")
    sample_every: int = knob(250, "steps between sample grids")
    checkpoint_every: int = knob(250, "steps between checkpoints")
    storage_path: str | None = knob(None, "checkpoint storage: local dir, s3://, shared FS",
                                    shown_default="./ray_results")
    max_failures: int = knob(2, "worker-group restarts from the last checkpoint before the run fails")
    wait_for_workers: float = knob(600.0, "seconds the run waits for its workers' CPUs/GPUs, saying what holds "
                                          "them, before it fails")
    # Sample quality while training (issue 30), as stylegan2-ada measures at every snapshot and
    # PyTorch-StudioGAN keeps its best checkpoint. 2,000 samples: the FD's bias falls with N
    # (Chong and Forsyth 2020), and 2,000 cost about 1 s on a 2-core CPU at 28 px.
    eval_every: int = knob(0, "generator steps between sample-quality evaluations on rank 0: eval/fd and class "
                              "coverage in the project classifier's features, each with a checkpoint that Ray Train "
                              "ranks by eval/fd (0: none)", shown_default="0 (off)")
    eval_samples: int = knob(2000, "samples each --eval-every evaluation scores (a fixed latent batch)")
    classifier: str | None = knob(None, "classifier run whose features --eval-every measures in",
                                  shown_default="the newest on the same dataset, size and channels")
    keep_checkpoints: int = knob(0, "checkpoints Ray Train keeps: the best by eval/fd with --eval-every, else the "
                                    "newest; the newest is always kept (0: all)", shown_default="0 (all)")

    def validate(self) -> "RunSettings":
        checks = [
            (self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
            (self.precision in PRECISIONS,
             f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"),
            (self.precision != "fp16" or self.gpu,
             "--precision fp16 runs on GPUs only (--gpu): CPUs emulate fp16; use bf16 or fp32"),
            (self.log_every >= 1 and self.sample_every >= 1 and self.checkpoint_every >= 1,
             "log/sample/checkpoint intervals must be >= 1"),
            (self.max_failures >= 0, f"--max-failures must be >= 0, got {self.max_failures}"),
            (self.wait_for_workers > 0, f"--wait-for-workers must be > 0 seconds, got {self.wait_for_workers}"),
            (self.eval_every >= 0, f"--eval-every must be >= 0 (0: no evaluations), got {self.eval_every}"),
            (self.eval_samples >= 2, f"--eval-samples must be >= 2 (a Frechet distance needs their covariance), "
                                     f"got {self.eval_samples}"),
            (self.keep_checkpoints >= 0, f"--keep-checkpoints must be >= 0 (0: all), got {self.keep_checkpoints}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def check_fits(self, cfg: TrainConfig, images: int | None = None) -> None:
        """Refuse a batch that does not split evenly over the workers or, given the dataset's
        ``images``, that the data cannot fill: Ray Train gives each worker an equal share of the
        rows (images // workers), it takes batch / workers of them a step and drops an epoch's
        last partial batch, so a worker whose share is smaller never gets a batch."""
        if cfg.batch % self.workers:
            raise ConfigError(f"--batch {cfg.batch} does not split over {self.workers} workers: "
                              f"use a batch that is a multiple of --workers")
        share = None if images is None else images // self.workers
        if share is not None and share < cfg.batch // self.workers:
            split = (f" ({cfg.batch // self.workers} a step on each of {self.workers} workers, whose shares are "
                     f"{share} images)" if self.workers > 1 else "")
            raise ConfigError(f"--batch {cfg.batch} is more than the {images} images of the dataset{split}: "
                              f"lower --batch to at most {share * self.workers} or prepare more images")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown run setting(s) {', '.join(unknown)}: valid ones are {', '.join(sorted(names))}")
        return cls(**values)

    @classmethod
    def from_legacy(cls, config: dict[str, Any], **values: Any) -> "RunSettings":
        """The settings of a run logged before the split: its config.json held them."""
        return cls(**{k: config[k] for k in LEGACY_RUN_KEYS if k in config}, **values)
