"""One-file training checkpoints that load without unpickling arbitrary objects.

Layout: docs/architecture.md, section 2. Saving goes through a temporary file and
an atomic rename, so a crash mid-save never leaves a truncated checkpoint where it is
written. Ray Train then copies the directory to the run's storage file by file, in place
(no rename: a kill or a full disk mid-copy leaves part of it), so the file's size and
sha256 go beside it (``checkpoint.json``) and `load` verifies them: a copy cut short,
whatever its bytes, never loads as a checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

import pyarrow.fs as pafs

from wgan.config import TrainConfig
from wgan.data.manifest import file_sha256
from wgan.errors import UserError

# 2: checkpoint.json (the file's size and sha256) is part of the checkpoint; 1 (older runs) had none.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
FILENAME = "checkpoint.pt"
INTEGRITY_FILENAME = "checkpoint.json"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainingState:
    """What a checkpoint holds besides the step, the config and the run: the networks, their optimizers
    and schedulers, the EMA generator, the fixed latents of the sample grids and the critic's clock."""

    generator: nn.Module
    critic: nn.Module
    g_optimizer: torch.optim.Optimizer
    d_optimizer: torch.optim.Optimizer
    fixed_z: torch.Tensor
    generator_ema: nn.Module | None = None
    g_scheduler: LRScheduler | None = None
    d_scheduler: LRScheduler | None = None
    critic_updates: int | None = None


def save(directory: str | os.PathLike, state: TrainingState, *, step: int, cfg: TrainConfig,
         mlflow_run_id: str | None) -> Path:
    """Write ``state`` at ``step`` into ``directory`` atomically, with an integrity record beside it."""
    generator, critic, generator_ema = state.generator, state.critic, state.generator_ema
    g_scheduler, d_scheduler = state.g_scheduler, state.d_scheduler
    path = Path(directory) / FILENAME
    payload = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "config": cfg.to_dict(),
        "generator": generator.state_dict(),
        "critic": critic.state_dict(),
        "g_optimizer": state.g_optimizer.state_dict(),
        "d_optimizer": state.d_optimizer.state_dict(),
        "rng": rng_state(),
        "fixed_z": state.fixed_z.cpu(),
        "mlflow_run_id": mlflow_run_id,
        # torch.optim.swa_utils.AveragedModel's state: "module.<name>" weights and n_averaged.
        "generator_ema": None if generator_ema is None else generator_ema.state_dict(),
        # LambdaLR state_dicts (last_epoch = generator steps taken, base_lrs); None in older checkpoints.
        "g_scheduler": None if g_scheduler is None else g_scheduler.state_dict(),
        "d_scheduler": None if d_scheduler is None else d_scheduler.state_dict(),
        # critic updates taken: the clock of --gp-every (None: `critic_updates_of` derives it)
        "critic_updates": state.critic_updates,
    }
    tmp = path.with_suffix(".pt.tmp")
    try:
        with open(tmp, "wb") as out:  # a file object: a full disk surfaces as its OSError (`wgan.errors.no_space`)
            torch.save(payload, out)
        os.replace(tmp, path)
        _write_atomically(path.parent / INTEGRITY_FILENAME, json.dumps(_integrity(path)).encode())
    except BaseException:
        tmp.unlink(missing_ok=True)  # nothing half-written stays
        raise
    return path


def _integrity(path: Path) -> dict[str, Any]:
    return {"file": FILENAME, "bytes": path.stat().st_size, "sha256": file_sha256(pafs.LocalFileSystem(), str(path))}


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _verify(path: Path) -> bool:
    """Refuse a checkpoint file whose recorded size or sha256 it does not have (a copy cut short,
    or bytes changed since); False when nothing is recorded beside it (format 1 had nothing)."""
    record = path.parent / INTEGRITY_FILENAME
    if not record.is_file():
        return False
    try:
        expected = json.loads(record.read_text())
        found = _integrity(path)
    except (OSError, ValueError) as err:
        raise UserError(f"checkpoint {path} cannot be verified ({type(err).__name__}): it is incomplete or corrupt")
    if found["bytes"] != expected.get("bytes"):
        raise UserError(f"checkpoint {path} is incomplete: {found['bytes']} of {expected.get('bytes')} bytes")
    if found["sha256"] != expected.get("sha256"):
        raise UserError(f"checkpoint {path} is corrupt: its sha256 is not the one recorded when it was saved")
    return True


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file (or a directory holding one) with ``weights_only=True``, verified
    first against its recorded size and sha256 (format 2, where that record is required)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: pass a checkpoint directory written by `wganctl train`")
    verified = _verify(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise UserError(f"checkpoint {path} cannot be read ({type(err).__name__}): it is corrupt or not a wganctl checkpoint")
    version = payload.get("format_version") if isinstance(payload, dict) else None
    if version not in READABLE_VERSIONS:
        raise UserError(f"checkpoint {path} has format_version {version}, expected one of {READABLE_VERSIONS}")
    if version >= 2 and not verified:
        raise UserError(f"checkpoint {path} is incomplete: its {INTEGRITY_FILENAME} is missing (a write cut short)")
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


def critic_updates_of(payload: dict[str, Any]) -> int:
    """The critic updates a checkpoint's run had taken (its --gp-every clock); a checkpoint that
    does not record it (older ones, callers without a clock) had taken n_critic per generator step."""
    if payload.get("critic_updates") is not None:
        return int(payload["critic_updates"])
    return int(payload["step"]) * int(payload["config"].get("n_critic") or 1)


def sampling_state(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The generator weights to sample with: the moving average when the run kept one (--g-ema)."""
    ema = payload.get("generator_ema")
    if not ema:
        return payload["generator"]
    return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}


def config_of(payload: dict[str, Any]) -> TrainConfig:
    return TrainConfig.from_dict(payload["config"])
