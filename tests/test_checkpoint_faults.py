"""Storage faults lose nothing (issue 33): `train --resume` goes on from the newest checkpoint that
loads, sets the unreadable ones aside (never deleted), says so on the console and in the run; it
refuses in one line, before Ray starts, only when no checkpoint of the run loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.train import train
from wgan import checkpoint as ckpt
from wgan.config import RunSettings, TrainConfig


def _trained_run(tiny_dataset: str, storage: Path) -> str:
    cfg = TrainConfig(loss="wgan-gp", steps=8, width=8, z_dim=16, batch=16, n_critic=1)
    settings = RunSettings(log_every=4, sample_every=4, checkpoint_every=4, storage_path=str(storage))
    return train(cfg, tiny_dataset, run=settings, experiment="faults", progress=False).run_id


def test_resume_goes_on_from_the_newest_checkpoint_that_loads(tiny_dataset, ray_session, mlflow_store, tmp_path):
    storage = tmp_path / "ckpts"
    run_id = _trained_run(tiny_dataset, storage)
    run_dir = storage / f"wganctl-{run_id}"
    newest = run_dir / "checkpoint_0000008" / ckpt.FILENAME
    newest.write_bytes(newest.read_bytes()[:500])  # a write cut short

    resumed = CliRunner().invoke(app, ["train", "--resume", run_id, "--steps", "12", "--storage-path", str(storage)])
    assert resumed.exit_code == 0, resumed.output
    said = [line for line in resumed.output.splitlines() if "skipped checkpoint" in line]
    assert len(said) == 1 and "checkpoint_0000008" in said[0] and "resuming from step 4" in said[0], resumed.output

    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["wganctl.completed_steps"] == "12"
    assert "checkpoint_0000008" in run.data.tags["wganctl.skipped_checkpoints"]
    assert [m.value for m in client.get_metric_history(run_id, "train/resumed_from_step")] == [4]
    # the bad one is kept aside, byte for byte; step 8 was trained again and saved whole
    assert (run_dir / "unreadable-checkpoint_0000008" / ckpt.FILENAME).stat().st_size == 500
    assert ckpt.load(run_dir / "checkpoint_0000008")["step"] == 8
    assert ckpt.load(run_dir / "checkpoint_0000012")["step"] == 12


def test_resume_past_a_directory_a_kill_left_empty_and_refusal_when_nothing_loads(
        tiny_dataset, ray_session, mlflow_store, tmp_path):
    storage = tmp_path / "ckpts"
    run_id = _trained_run(tiny_dataset, storage)
    run_dir = storage / f"wganctl-{run_id}"
    (run_dir / "checkpoint_0000012").mkdir()  # a worker killed before its file was written
    resumed = CliRunner().invoke(app, ["train", "--resume", run_id, "--steps", "16", "--storage-path", str(storage)])
    assert resumed.exit_code == 0 and "resuming from step 8" in resumed.output, resumed.output
    assert (run_dir / "unreadable-checkpoint_0000012").is_dir()  # kept as the kill left it
    assert ckpt.load(run_dir / "checkpoint_0000016")["step"] == 16

    for path in run_dir.glob("checkpoint_0*/" + ckpt.FILENAME):
        path.write_bytes(b"not a checkpoint")
    refused = CliRunner().invoke(app, ["train", "--resume", run_id, "--steps", "20", "--storage-path", str(storage)])
    assert refused.exit_code == 2, refused.output
    assert len(refused.output.strip().splitlines()) == 1, refused.output
    assert f"no checkpoint of run {run_id}" in refused.output and "cannot be read" in refused.output
    # nothing moved or removed by a refusal
    assert sorted(p.name for p in run_dir.glob("checkpoint_0*")) == [
        "checkpoint_0000004", "checkpoint_0000008", "checkpoint_0000012", "checkpoint_0000016"]
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"  # the refusal rewrote nothing
