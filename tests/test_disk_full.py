"""No space left on device (issue 33): prepare refuses up front what will not fit, and a write that
meets a full disk anyway ends in one line and exit 2 with nothing half-written; a training run
that meets it fails in MLflow with its last good checkpoint kept, and resumes once space is freed.
The disks are real small tmpfs mounts (`small_disk`), the writes the stages' own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from pipelines.cli import app
from tests.cli_output import assert_one_line_error
from wgan import checkpoint as ckpt
from wgan.config import TrainConfig
from wgan.errors import UserError
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers


def _folder(root: Path, black: str, noise: str) -> Path:
    """260 black 32 px PNGs in class ``black``, 600 of noise in class ``noise``; classes come in name
    order, and prepare's size estimate reads the first rows: black first estimates low."""
    rng = np.random.default_rng(0)
    for name, count, is_noise in ((black, 260, False), (noise, 600, True)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) if is_noise else np.zeros((32, 32, 3), np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def test_prepare_onto_a_full_disk_refuses_up_front_or_ends_in_one_line(small_disk, tmp_path, ray_session):
    disk = small_disk(1 << 20)
    noise_first = _folder(tmp_path / "noise-first", black="b-black", noise="a-noise")
    refused = CliRunner().invoke(app, ["prepare", "imagefolder", str(noise_first), "--size", "32", "--out",
                                       str(disk / "data"), "--quiet"])
    assert_one_line_error(refused, f"--out {disk / 'data'}", "needs about", "MB free")
    assert list(disk.iterdir()) == []

    # the estimate from black rows is low: the write itself meets the full disk
    black_first = _folder(tmp_path / "black-first", black="a-black", noise="b-noise")
    full = CliRunner().invoke(app, ["prepare", "imagefolder", str(black_first), "--size", "32", "--out",
                                    str(disk / "data"), "--quiet"])
    assert_one_line_error(full, f"--out {disk / 'data'}", "no space left on device", "nothing was kept")
    assert list(disk.iterdir()) == []  # no shard, no temporary directory

    disk.resize(16 << 20)  # space freed: the same command succeeds
    done = CliRunner().invoke(app, ["prepare", "imagefolder", str(black_first), "--size", "32", "--out",
                                    str(disk / "data"), "--quiet"])
    assert done.exit_code == 0, done.output
    assert (disk / "data" / "manifest.json").is_file()


def _checkpoint_bytes(cfg: TrainConfig, tmp_path: Path) -> int:
    """The size of a checkpoint of ``cfg`` after a step (Adam's moments are in it)."""
    cfg = cfg.resolved()
    generator, critic = build_generator(cfg), build_critic(cfg)
    g_opt, d_opt = build_optimizers(cfg, generator, critic)
    TrainStep(cfg, generator, critic, g_opt, d_opt, precision_mode="fp32")([(torch.rand(4, 1, 28, 28) * 2 - 1, None)])
    ckpt.save(tmp_path, state=ckpt.TrainingState(generator=generator, critic=critic, g_optimizer=g_opt, d_optimizer=d_opt, fixed_z=torch.randn(64, cfg.z_dim)), step=1, cfg=cfg, mlflow_run_id=None)
    return (tmp_path / ckpt.FILENAME).stat().st_size


def test_a_run_that_fills_its_checkpoint_disk_fails_keeps_its_last_checkpoint_and_resumes(
        small_disk, tiny_dataset, ray_session, mlflow_store, tmp_path):
    cfg = TrainConfig(loss="wgan-gp", steps=12, width=8, z_dim=16, batch=16, n_critic=1, image_size=28, channels=1)
    size = _checkpoint_bytes(cfg, tmp_path)
    disk = small_disk(int(2.5 * size) + (64 << 10))  # two checkpoints and Ray's small files; not three
    options = ["--loss", "wgan-gp", "--width", "8", "--z-dim", "16", "--batch", "16", "--n-critic", "1",
               "--checkpoint-every", "4", "--log-every", "4", "--sample-every", "4", "--max-failures", "0",
               "--storage-path", str(disk), "--experiment", "full-disk", "--quiet"]
    failed = CliRunner().invoke(app, ["train", "--data", tiny_dataset, "--steps", "12", *options])
    line = assert_one_line_error(failed, "no space left on device", "last good checkpoint is kept in", "--resume")
    run = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("full-disk").experiment_id])[0]
    run_id = run.info.run_id
    assert run_id in line and run.info.status == "FAILED"
    assert "no space left on device" in run.data.tags["wganctl.failure_reason"]
    run_dir = disk / f"wganctl-{run_id}"
    assert ckpt.load(run_dir / "checkpoint_0000008")["step"] == 8  # the last good one, whole
    with pytest.raises(UserError):  # what the full disk cut short never loads
        ckpt.load(run_dir / "checkpoint_0000012")

    disk.resize(16 << 20)  # space freed
    resumed = CliRunner().invoke(app, ["train", "--resume", run_id, "--steps", "12", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from step 8" in resumed.output, resumed.output
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    assert ckpt.load(run_dir / "checkpoint_0000012")["step"] == 12
