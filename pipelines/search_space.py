"""Search spaces for `wganctl tune`: the papers' knobs by default, any train option from YAML.

YAML form, one entry per `TrainConfig` knob (the keys of `wganctl train --config`):

    lr: {loguniform: [1.0e-5, 1.0e-3]}
    n_critic: {choice: [1, 2, 5, 10]}
    loss: {choice: [wgan, wgan-gp]}
    lambda_gp: {loguniform: [1, 100]}    # drawn only for wgan-gp trials
    gp_every: {choice: [1, 4, 16]}       # drawn only for wgan-gp trials
    clip: {uniform: [0.005, 0.05]}       # drawn only for wgan trials
    width: 32                            # a constant
    arch: {choice: [dcgan, resnet]}
    augment: {choice: [none, diffaug, "diffaug:translation,cutout"]}

The categorical knobs (CATEGORICAL: loss, arch, critic_norm, conditioning, lr_decay, augment, gp_every)
take a constant or a choice / grid of their valid values; anything else is refused before the
sweep starts, naming the key and the valid values.

Knobs that belong to one loss (lambda_gp and gp_every to wgan-gp, clip to wgan) are drawn
only for trials of that loss, so a trial's parameters never show a knob that
did nothing.
"""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass
from typing import Any

import yaml

from wgan.config import ARCHS, CONDITIONINGS, CRITIC_NORMS, LOSSES, LR_DECAYS, RunSettings, TrainConfig, augment_policy
from wgan.errors import UserError
from wgan.knobs import knob, knobs

SCHEDULERS = ("asha", "pbt", "none")
# Ray Tune's domain of each YAML distribution ("grid": every value, in order, for each of --trials samples).
DISTRIBUTIONS = {"loguniform": "loguniform", "uniform": "uniform", "randint": "randint", "choice": "choice",
                 "grid": "grid_search"}
# Ranges around the papers' values: lambda 10 (Gulrajani et al. 2017), c 0.01 and
# lr 5e-5 (Arjovsky et al. 2017), lr 1e-4 and n_critic 5 (both).
DEFAULT_SPACE: dict[str, Any] = {
    "loss": {"choice": ["wgan", "wgan-gp"]},
    "lambda_gp": {"loguniform": [1.0, 100.0]},
    "clip": {"uniform": [0.005, 0.05]},
    "n_critic": {"choice": [1, 2, 5, 10]},
    "lr": {"loguniform": [1e-5, 1e-3]},
}
LOSS_ONLY = {"lambda_gp": "wgan-gp", "gp_every": "wgan-gp", "clip": "wgan"}
# Knobs that name one of a few things: swept only by choice or grid, over valid values (None: the
# loss's default, where the knob has one). augment's values are policies, checked by augment_policy.
CATEGORICAL: dict[str, tuple[str, ...]] = {"loss": LOSSES, "arch": ARCHS, "critic_norm": CRITIC_NORMS + (None,),
                                           "conditioning": CONDITIONINGS, "lr_decay": LR_DECAYS,
                                           "augment": ("none", "diffaug", "diffaug:OPS"),
                                           # the lazy penalty's interval (StyleGAN2 used 16 for R1)
                                           "gp_every": (1, 2, 4, 8, 16)}


@dataclass
class SweepSettings:
    """How a sweep runs: its size, its scheduler, each trial's length and shape (`wganctl tune`'s
    options are generated from these knobs, as `wganctl train`'s are from the config's)."""

    trials: int = knob(32, "number of trials")
    scheduler: str = knob("asha", f"{', '.join(SCHEDULERS[:-1])} or {SCHEDULERS[-1]}",
                          cite="ASHA: Li et al. 2020, early stopping; PBT: Jaderberg et al. 2017")
    steps: int = knob(400, "generator steps per trial (at most)")
    reports: int = knob(16, "objective evaluations per trial, every steps/reports steps (ASHA's rungs count "
                            "these: 1, 4, 16)")
    trial_workers: int = knob(1, "Ray Train workers per trial")
    gpus_per_trial: float = knob(0.0, "GPUs per trial worker (0: CPU)")
    max_concurrent: int | None = knob(None, "trials running at once", shown_default="what fits")
    seed: int | None = knob(None, "seed of the search: the same seed and space draw the same trials",
                            shown_default="unseeded")
    objective_samples: int = knob(500, "samples each objective evaluation draws")
    wait_for_workers: float = knob(RunSettings.wait_for_workers, "seconds a trial waits for its workers' CPUs/GPUs, "
                                   "saying what holds them, before it fails (the sweep goes on)")
    space: str | None = knob(None, "YAML search space", shown_default="lambda, clip, n_critic, lr, loss around the "
                                                                     "papers' values")
    classifier: str | None = knob(None, "MLflow run id of the classifier whose features score samples",
                                  shown_default="the newest on the same dataset, size and channels")
    storage_path: str | None = knob(None, "trial checkpoints and Tune's state: local dir, s3://, shared FS",
                                    shown_default="./ray_results")
    register: str | None = knob(None, "register the best generator under this model name", shown_default="none")
    alias: str | None = knob(None, "with --register: the alias set on the new version, models:/NAME@ALIAS then "
                                   "names it", shown_default="champion")

    def validate(self) -> "SweepSettings":
        """Every setting checked before anything starts; a UserError names the option and what to give."""
        checks = [
            (self.scheduler in SCHEDULERS, f"unknown scheduler {self.scheduler!r}: choose one of {', '.join(SCHEDULERS)}"),
            (self.trials >= 1 and self.reports >= 1 and self.steps >= self.reports,
             f"--trials and --reports must be >= 1 and --steps ({self.steps}) >= --reports ({self.reports})"),
            (self.steps % max(1, self.reports) == 0,
             f"--steps ({self.steps}) must be a multiple of --reports ({self.reports}), e.g. "
             f"{self.steps - self.steps % max(1, self.reports)} or "
             f"{self.steps - self.steps % max(1, self.reports) + self.reports}: "
             f"the objective is computed every steps/reports steps"),
            (self.trial_workers >= 1, f"--trial-workers must be >= 1, got {self.trial_workers}"),
            (self.gpus_per_trial >= 0, f"--gpus-per-trial must be >= 0 (0: CPU trials), got {self.gpus_per_trial}"),
            (self.max_concurrent is None or self.max_concurrent >= 1,
             f"--max-concurrent must be >= 1 (default: what fits), got {self.max_concurrent}"),
            (self.objective_samples >= 2, f"--objective-samples must be >= 2 (a Frechet distance needs their "
                                          f"covariance), got {self.objective_samples}"),
            (self.seed is None or self.seed >= 0, f"--seed must be zero or positive, got {self.seed}"),
            (self.scheduler != "pbt" or self.reports >= 3,
             f"--scheduler pbt needs --reports 3 or more (a perturbation before the last report), got {self.reports}"),
            (self.alias is None or bool(self.register),
             f"--alias {self.alias} names the version that --register registers: add --register NAME, or drop --alias"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self

    @property
    def registered_alias(self) -> str:
        return self.alias or "champion"


def swept_keys() -> set[str]:
    """The keys a space may name: the train knobs of the CLI and of ``--config`` files (the
    hyperparameters; the run settings are the sweep's own), except the steps, which the sweep
    sets for every trial."""
    return {k.name for k in knobs(TrainConfig) if k.cli and k.name != "steps"}


def load_space(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return dict(DEFAULT_SPACE)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"search space file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"search space {path} is not valid YAML: {str(err).splitlines()[0]}")
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"search space {path} must be a non-empty mapping of train options to distributions")
    return raw


def to_param_space(space: dict[str, Any]) -> dict[str, Any]:
    """Validate ``space`` (errors name the key's path) and turn it into Ray Tune domains."""
    fields = swept_keys()
    out: dict[str, Any] = {}
    for key, value in space.items():
        if key not in fields:
            raise UserError(f"space.{key}: not a train option that can be swept; use one of {', '.join(sorted(fields))}")
        if key in CATEGORICAL:
            _check_categorical(key, value)
        out[key] = _domain(key, value)
    for key, loss in LOSS_ONLY.items():
        if key in out and "loss" in out:
            out[key] = _only_for(loss, out[key])
    return out


def _check_categorical(key: str, value: Any) -> None:
    """A constant or a choice / grid of valid values, else a UserError naming the key."""
    if isinstance(value, dict):
        name, values = next(iter(value.items())) if len(value) == 1 else (None, None)
        if name not in ("choice", "grid") or not isinstance(values, list):
            raise UserError(f"space.{key}: a categorical knob takes a constant or {{choice: [...]}} / {{grid: [...]}} "
                            f"of {', '.join(map(str, CATEGORICAL[key]))}, got {value!r}")
    else:
        values = [value]
    for item in values:
        if key == "augment":
            try:
                augment_policy(str(item))
            except UserError as err:
                raise UserError(f"space.{key}: {err}") from None
        elif item not in CATEGORICAL[key]:
            raise UserError(f"space.{key}: {item!r} is not one of {', '.join(map(str, CATEGORICAL[key]))}")


def _domain(key: str, value: Any):
    if not isinstance(value, dict):
        return value  # a constant
    if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
        raise UserError(f"space.{key}: expected one of {', '.join(DISTRIBUTIONS)} with a list, got {value!r}")
    (name, args), = value.items()
    ranged = name not in ("choice", "grid")
    if not isinstance(args, list) or (ranged and len(args) != 2):
        raise UserError(f"space.{key}.{name}: expected a list{' of [low, high]' if ranged else ''}, got {args!r}")
    from ray import tune  # here: the CLI imports this module for SweepSettings, and must start fast

    try:
        return getattr(tune, DISTRIBUTIONS[name])(*([list(args)] if name in ("choice", "grid") else args))
    except Exception as err:
        raise UserError(f"space.{key}.{name}: {err}")


def _only_for(loss: str, domain):
    from ray import tune

    sample = domain.sample if hasattr(domain, "sample") else (lambda: domain)
    return tune.sample_from(lambda config: sample() if config["loss"] == loss else None)
