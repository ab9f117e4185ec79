"""Storage faults lose nothing (issue 33): `train --resume` goes on from the newest checkpoint that
loads, sets the unreadable ones aside (never deleted), says so on the console and in the run; it
refuses in one line, before Ray starts, only when no checkpoint of the run loads. A checkpoint is
whole or it does not load: its recorded size and sha256 are verified (`wgan.checkpoint`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.train import train
from pipelines.tune.trial import _donor_checkpoint
from wgan import checkpoint as ckpt
from wgan.config import RunSettings, TrainConfig
from wgan.errors import UserError
from wgan.networks import build_critic, build_generator
from wgan.step import build_optimizers


def _saved(directory: Path, step: int) -> Path:
    cfg = TrainConfig(loss="wgan-gp", steps=8, width=8, z_dim=16, image_size=28, channels=1).resolved()
    generator, critic = build_generator(cfg), build_critic(cfg)
    g_opt, d_opt = build_optimizers(cfg, generator, critic)
    directory.mkdir()
    torch.manual_seed(step)
    ckpt.save(directory, state=ckpt.TrainingState(generator=generator, critic=critic, g_optimizer=g_opt, d_optimizer=d_opt, fixed_z=torch.randn(4, cfg.z_dim)), step=step, cfg=cfg, mlflow_run_id=None)
    return directory


def test_a_checkpoint_cut_short_or_changed_never_loads(tmp_path):
    whole = _saved(tmp_path / "whole", step=4)
    assert ckpt.load(whole)["step"] == 4 and (whole / ckpt.INTEGRITY_FILENAME).is_file()

    truncated = shutil.copytree(whole, tmp_path / "truncated")
    data = (truncated / ckpt.FILENAME).read_bytes()
    (truncated / ckpt.FILENAME).write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match=r"is incomplete: \d+ of \d+ bytes"):
        ckpt.load(truncated)

    # another checkpoint's bytes, the same size: torch would load it; the recorded sha256 does not match
    other = _saved(tmp_path / "other", step=8)
    changed = shutil.copytree(whole, tmp_path / "changed")
    shutil.copyfile(other / ckpt.FILENAME, changed / ckpt.FILENAME)
    assert (changed / ckpt.FILENAME).stat().st_size == (whole / ckpt.FILENAME).stat().st_size
    with pytest.raises(UserError, match="is corrupt: its sha256"):
        ckpt.load(changed)

    # a copy cut between its two files: the checkpoint file whole, its record never written
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copyfile(whole / ckpt.FILENAME, cut / ckpt.FILENAME)
    assert torch.load(cut / ckpt.FILENAME, weights_only=True)["step"] == 4  # looks valid ...
    with pytest.raises(UserError, match="checkpoint.json is missing"):
        ckpt.load(cut)  # ... and is refused

    # a checkpoint of format 1 (before the record existed) still loads
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    payload = torch.load(whole / ckpt.FILENAME, weights_only=True)
    torch.save({**payload, "format_version": 1}, legacy / ckpt.FILENAME)
    assert ckpt.load(legacy)["step"] == 4


def _trained_run(tiny_dataset: str, storage: Path) -> str:
    # --gp-every 3 puts the checkpoints of steps 4 and 8 mid-cycle of the lazy penalty's clock
    cfg = TrainConfig(loss="wgan-gp", steps=8, width=8, z_dim=16, batch=16, n_critic=1, gp_every=3)
    settings = RunSettings(log_every=4, sample_every=4, checkpoint_every=4, storage_path=str(storage))
    return train(cfg, tiny_dataset, run=settings, experiment="faults", progress=False).run_id


def test_resume_goes_on_from_the_newest_checkpoint_that_loads(tiny_dataset, ray_session, mlflow_store, tmp_path,
                                                              capsys):
    storage = tmp_path / "ckpts"
    run_id = _trained_run(tiny_dataset, storage)
    run_dir = storage / f"wganctl-{run_id}"
    newest = run_dir / "checkpoint_0000008" / ckpt.FILENAME
    newest.write_bytes(newest.read_bytes()[:500])  # a write cut short
    # a kill between the copy's two files: a whole checkpoint.pt (of step 8) that torch would load
    (run_dir / "checkpoint_0000012").mkdir()
    shutil.copyfile(run_dir / "checkpoint_0000004" / ckpt.FILENAME, run_dir / "checkpoint_0000012" / ckpt.FILENAME)

    # PBT's exploit of this run's step-12 checkpoint would go on from the newest earlier one that loads
    donor = {"path": str(run_dir / "checkpoint_0000012"), "run_id": run_id}
    assert _donor_checkpoint("trial_1", donor) == str(run_dir / "checkpoint_0000004")
    assert "donor run" in capsys.readouterr().out

    resumed = CliRunner().invoke(app, ["train", "--resume", run_id, "--steps", "12", "--storage-path", str(storage)])
    assert resumed.exit_code == 0, resumed.output
    said = [line for line in resumed.output.splitlines() if "skipped checkpoint" in line]
    assert len(said) == 1 and "resuming from step 4" in said[0], resumed.output
    assert "checkpoint_0000012 (" in said[0] and "checkpoint.json is missing" in said[0], resumed.output
    assert "checkpoint_0000008 (" in said[0] and "is incomplete: 500 of" in said[0], resumed.output

    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["wganctl.completed_steps"] == "12"
    assert "checkpoint_0000008" in run.data.tags["wganctl.skipped_checkpoints"]
    assert "checkpoint_0000012" in run.data.tags["wganctl.skipped_checkpoints"]
    assert [m.value for m in client.get_metric_history(run_id, "train/resumed_from_step")] == [4]
    # the bad one is kept aside, byte for byte; step 8 was trained again and saved whole
    assert (run_dir / "unreadable-checkpoint_0000008" / ckpt.FILENAME).stat().st_size == 500
    assert ckpt.load(run_dir / "checkpoint_0000008")["step"] == 8
    assert (run_dir / "unreadable-checkpoint_0000012" / ckpt.FILENAME).is_file()
    assert ckpt.load(run_dir / "checkpoint_0000012")["step"] == 12
    # the critic-update clock (--gp-every) went on from the checkpoint resumed from, mid-cycle at update 4:
    # 12 updates at n_critic 1 (a clock restarted at 0 would say 8, and take the penalty on other updates)
    assert ckpt.load(run_dir / "checkpoint_0000012")["critic_updates"] == 12


def test_resume_past_a_directory_a_kill_left_empty_a_failed_resume_and_refusal_when_nothing_loads(
        tiny_dataset, ray_session, mlflow_store, tmp_path, monkeypatch):
    storage = tmp_path / "ckpts"
    run_id = _trained_run(tiny_dataset, storage)
    run_dir = storage / f"wganctl-{run_id}"
    (run_dir / "checkpoint_0000012").mkdir()  # a worker killed before its file was written
    resumed = CliRunner().invoke(app, ["train", "--resume", run_id, "--steps", "16", "--storage-path", str(storage)])
    assert resumed.exit_code == 0 and "resuming from step 8" in resumed.output, resumed.output
    assert (run_dir / "unreadable-checkpoint_0000012").is_dir()  # kept as the kill left it
    assert ckpt.load(run_dir / "checkpoint_0000016")["step"] == 16

    # a resume of the FINISHED run that fails before its next checkpoint does not rewrite its history
    monkeypatch.setenv("WGANCTL_TEST_FAIL_AT_STEP", "18")
    failed = CliRunner().invoke(app, ["train", "--resume", run_id, "--steps", "20", "--max-failures", "0", "--quiet"])
    monkeypatch.delenv("WGANCTL_TEST_FAIL_AT_STEP")
    assert failed.exit_code == 1 and "left as its training ended" in failed.output, failed.output
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["wganctl.completed_steps"] == "16"
    assert "step 18" in run.data.tags["wganctl.failed_resume"]
    assert "wganctl.failure_reason" not in run.data.tags

    for path in run_dir.glob("checkpoint_0*/" + ckpt.FILENAME):
        path.write_bytes(b"not a checkpoint")
    refused = CliRunner().invoke(app, ["train", "--resume", run_id, "--steps", "20", "--storage-path", str(storage)])
    assert refused.exit_code == 2, refused.output
    assert len(refused.output.strip().splitlines()) == 1, refused.output
    assert f"no checkpoint of run {run_id}" in refused.output and "is incomplete" in refused.output
    # nothing moved or removed by a refusal
    assert sorted(p.name for p in run_dir.glob("checkpoint_0*")) == [
        "checkpoint_0000004", "checkpoint_0000008", "checkpoint_0000012", "checkpoint_0000016"]
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"  # the refusal rewrote nothing
