"""One-file training checkpoints that load without unpickling arbitrary objects.

Layout: docs/architecture.md, section 2. Saving goes through a temporary file and
an atomic rename, so a crash mid-save never leaves a truncated checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from wgan.config import TrainConfig
from wgan.errors import UserError

FORMAT_VERSION = 1
FILENAME = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: str | os.PathLike, *, step: int, cfg: TrainConfig, generator: nn.Module,
         critic: nn.Module, g_optimizer: torch.optim.Optimizer, d_optimizer: torch.optim.Optimizer,
         fixed_z: torch.Tensor, mlflow_run_id: str | None, generator_ema: nn.Module | None = None,
         g_scheduler: LRScheduler | None = None, d_scheduler: LRScheduler | None = None) -> Path:
    path = Path(directory) / FILENAME
    payload = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "config": cfg.to_dict(),
        "generator": generator.state_dict(),
        "critic": critic.state_dict(),
        "g_optimizer": g_optimizer.state_dict(),
        "d_optimizer": d_optimizer.state_dict(),
        "rng": rng_state(),
        "fixed_z": fixed_z.cpu(),
        "mlflow_run_id": mlflow_run_id,
        # torch.optim.swa_utils.AveragedModel's state: "module.<name>" weights and n_averaged.
        "generator_ema": None if generator_ema is None else generator_ema.state_dict(),
        # LambdaLR state_dicts (last_epoch = generator steps taken, base_lrs); None in older checkpoints.
        "g_scheduler": None if g_scheduler is None else g_scheduler.state_dict(),
        "d_scheduler": None if d_scheduler is None else d_scheduler.state_dict(),
    }
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file (or a directory holding one) with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}: pass a checkpoint directory written by `wganctl train`")
    except Exception as err:  # a truncated or foreign file
        raise UserError(f"checkpoint {path} cannot be read ({type(err).__name__}): it is corrupt or not a wganctl checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format_version {payload.get('format_version')}, expected {FORMAT_VERSION}")
    return payload


def restore_schedulers(payload: dict[str, Any], g_scheduler: LRScheduler, d_scheduler: LRScheduler,
                       lr: float) -> None:
    """Continue the checkpoint's learning-rate schedules (`wgan.step.build_schedulers`) from the
    step they were at, with ``lr`` as the base rate (the run's own: PBT perturbs it), so a resumed
    run's rate is ``lr`` times the schedule's factor at that step. A checkpoint from before the
    schedules were saved had no decay: its rate is ``lr``."""
    for scheduler, key in ((g_scheduler, "g_scheduler"), (d_scheduler, "d_scheduler")):
        if payload.get(key):
            scheduler.load_state_dict(payload[key])
        scheduler.base_lrs = [lr] * len(scheduler.optimizer.param_groups)
        for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
            group["initial_lr"], group["lr"] = lr, lr * factor(scheduler.last_epoch)


def sampling_state(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The generator weights to sample with: the moving average when the run kept one (--g-ema)."""
    ema = payload.get("generator_ema")
    if not ema:
        return payload["generator"]
    return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}


def config_of(payload: dict[str, Any]) -> TrainConfig:
    return TrainConfig.from_dict(payload["config"])
