"""Quality you can watch (issue 30): `train --eval-every N` logs an eval/fd curve from rank 0, Ray Train
keeps the best checkpoint by it (across a resume), and `--checkpoint best` samples and evaluates that one."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from pipelines import objective
from pipelines.cli import app
from pipelines.cluster import checkpoints
from pipelines.tracking import run_tags
from pipelines.train import best_checkpoint, checkpoint_config, train
from wgan.config import RunSettings, TrainConfig

pytestmark = pytest.mark.slow

SMALL = dict(loss="wgan-gp", width=8, z_dim=16, batch=16, n_critic=1)


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    values = {}
    for metric in client.get_metric_history(run_id, key):
        assert metric.step not in values, f"{key} logged twice at step {metric.step}: by more than rank 0"
        values[metric.step] = metric.value
    return values


def kept_steps(storage: Path, run_id: str) -> list[int]:
    return sorted(int(p.name.removeprefix(checkpoints.DIR_PREFIX)) for p in (storage / f"wganctl-{run_id}").iterdir()
                  if p.is_dir() and p.name.startswith(checkpoints.DIR_PREFIX))


def test_two_workers_log_an_fd_curve_and_ray_keeps_the_best_checkpoint_across_a_resume(
        tiny_dataset, ray_session, mlflow_with_classifier, tmp_path):
    storage = tmp_path / "ckpts"
    # evaluations at 2, 4 and 6; checkpoints at 3 too (NaN: ranked last); Ray keeps the best and the newest
    settings = RunSettings(workers=2, log_every=1, sample_every=6, checkpoint_every=3, eval_every=2, eval_samples=64,
                           keep_checkpoints=1, storage_path=str(storage))
    result = train(TrainConfig(steps=6, **SMALL), tiny_dataset, run=settings, experiment="eval", progress=False)
    client = MlflowClient()
    fd = history(client, result.run_id, "eval/fd")
    assert sorted(fd) == [2, 4, 6] and all(math.isfinite(v) and v > 0 for v in fd.values())
    assert sorted(history(client, result.run_id, "eval/coverage_classes")) == [2, 4, 6]
    assert sorted(history(client, result.run_id, "eval/seconds")) == [2, 4, 6]
    best = min(fd, key=fd.get)
    tags = client.get_run(result.run_id).data.tags
    assert (int(tags[run_tags.BEST_STEP]), float(tags[run_tags.BEST_FD])) == (best, pytest.approx(fd[best], rel=1e-5))
    assert (result.best_step, result.final_fd) == (best, pytest.approx(fd[6]))
    assert kept_steps(storage, result.run_id) == sorted({best, 6})  # Ray Train deleted the others
    assert "trained 6 steps on fashion-mnist at 28 px" in tags[run_tags.DESCRIPTION]
    assert f"best {fd[best]:.3f} at step {best}" in tags[run_tags.DESCRIPTION]

    # Resumed, the run keeps its best so far: Ray Train's record of the checkpoints comes back with it
    res = CliRunner().invoke(app, ["train", "--resume", result.run_id, "--steps", "8", "--workers", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    fd = history(client, result.run_id, "eval/fd")
    assert sorted(fd) == [2, 4, 6, 8]
    best = min(fd, key=fd.get)
    assert client.get_run(result.run_id).data.tags[run_tags.BEST_STEP] == str(best)
    assert kept_steps(storage, result.run_id) == sorted({best, 8})
    assert f"best {fd[best]:.3f} at step {best}" in res.output

    # --checkpoint best: evaluate scores that checkpoint (logged at its step); sample draws from it
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", result.run_id, "--checkpoint", "best", "--n", "64", "--metrics", "fid",
                              "--quiet"])
    assert res.exit_code == 0, res.output
    run = client.get_run(result.run_id)
    assert run.data.tags["eval.checkpoint_step"] == str(best)
    assert [m.step for m in client.get_metric_history(result.run_id, "eval/fid")] == [best]
    for which in ("best", str(best), "8"):
        res = runner.invoke(app, ["sample", result.run_id, "--checkpoint", which, "--n", "4", "--out", f"{which}.npy"])
        assert res.exit_code == 0, res.output
    final = runner.invoke(app, ["sample", result.run_id, "--n", "4", "--out", "final.npy"])
    assert final.exit_code == 0, final.output
    assert np.array_equal(np.load("best.npy"), np.load(f"{best}.npy"))
    assert np.array_equal(np.load("final.npy"), np.load("8.npy"))  # the logged model is the final one
    res = runner.invoke(app, ["interpolate", result.run_id, "--checkpoint", "best", "--rows", "2", "--steps", "3",
                              "--out", "path.png"])
    assert res.exit_code == 0 and Image.open("path.png").size[0] > 0, res.output
    res = runner.invoke(app, ["compare", result.run_id, "--checkpoint", "best"])
    assert res.exit_code == 0, res.output
    assert str(best) in res.output.splitlines()[1].split()


def _report_fds(config: dict) -> None:
    import ray.train

    for step, fd in config["fds"]:  # as rank 0 reports them (pipelines.train_worker._RankZero.checkpoint)
        metrics = {"step": step, objective.RANK_SCORE: objective.UNSCORED if fd is None else fd}
        if fd is not None:
            metrics[objective.EVAL_FD] = fd
        with tempfile.TemporaryDirectory() as directory:
            Path(directory, "x").write_text(str(step))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=checkpoints.dir_name(step))


def test_ray_train_keeps_the_lowest_fd_and_the_newest_and_remembers_them_on_a_resume(ray_session, tmp_path):
    """The policy of the train stage (`checkpoint_config`, `best_checkpoint`) on Ray Train itself, with an FD
    curve that is not best at its end; a second fit of the same run name is how --resume restarts it."""
    import ray.train
    from ray.train.torch import TorchTrainer

    def fit(fds):
        return TorchTrainer(_report_fds, train_loop_config={"fds": fds},
                            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
                            run_config=ray.train.RunConfig(name="wganctl-r", storage_path=str(tmp_path),
                                                           checkpoint_config=checkpoint_config(policy))).fit()

    policy = RunSettings(eval_every=1, keep_checkpoints=1)
    result = fit([(1, 5.0), (2, 3.0), (3, None), (4, 4.0), (5, None)])
    assert best_checkpoint(result) == (2, 3.0, None)  # the newest report had no evaluation
    assert kept_steps(tmp_path, "r") == [2, 5]
    result = fit([(6, 3.5), (7, 2.5), (8, 2.9)])
    assert best_checkpoint(result) == (7, 2.5, 2.9)
    assert kept_steps(tmp_path, "r") == [7, 8]


def test_a_run_without_evaluations_has_no_best(tiny_dataset, ray_session, mlflow_with_classifier, tmp_path):
    result = train(TrainConfig(steps=2, **SMALL), tiny_dataset, experiment="eval", progress=False,
                   run=RunSettings(log_every=1, sample_every=2, checkpoint_every=2, storage_path=str(tmp_path / "c")))
    res = CliRunner().invoke(app, ["sample", result.run_id, "--checkpoint", "best", "--out", "x.png"])
    assert res.exit_code == 2
    assert "has no best checkpoint: it trained without --eval-every" in res.output
    assert run_tags.BEST_STEP not in MlflowClient().get_run(result.run_id).data.tags
