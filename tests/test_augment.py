"""The synthetic-data experiment end to end: two conditional runs (WGAN-GP, standard GAN), three arms, Ray tasks, MLflow.

The two runs are made in this process with the library's training step and logged with
the train stage's own tracking functions (run layout, params, pyfunc model): Ray Train is
tested in test_train.py, and two more Ray Train start-ups would double this test's time.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pipelines.augment import augment_experiment
from pipelines.cli import app
from pipelines import tracking
from pipelines.prepare import prepare
from wgan import checkpoint as ckpt
from wgan.config import RunSettings, TrainConfig
from wgan.data.manifest import load_manifest, manifest_sha256
from wgan.data.reader import ShardReader
from wgan.errors import UserError
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers
from pipelines.stage_options import AugmentOptions, PrepareOptions


@pytest.fixture(scope="module")
def labelled_with_test(tmp_path_factory, ray_session) -> str:
    """400 real Fashion-MNIST images drawn from both splits (about 343 train, 57 test)."""
    out = tmp_path_factory.mktemp("data") / "fmnist-both"
    return prepare("fashion-mnist", options=PrepareOptions(size=28, limit=400, seed=3), out=str(out), progress=False).out


def conditional_run(data_dir: str, loss: str, tmp_path: Path) -> str:
    """A finished, logged class-conditional train run: two real training steps of ``loss``."""
    manifest = load_manifest(data_dir)
    cfg = TrainConfig(loss=loss, steps=2, width=8, z_dim=16, batch=16, image_size=28, channels=1,
                      num_classes=len(manifest["class_names"]), conditional=True).resolved()
    torch.manual_seed(0)
    generator, critic = build_generator(cfg), build_critic(cfg)
    g_opt, d_opt = build_optimizers(cfg, generator, critic)
    step = TrainStep(cfg, generator, critic, g_opt, d_opt)
    batches = iter(ShardReader(data_dir, 16, shuffle=True, manifest=manifest))
    for _ in range(cfg.steps):
        step(next(batches) for _ in range(cfg.n_critic))
    client = MlflowClient()
    run_id = tracking.start_train_run(client, "t", cfg, RunSettings(storage_path=str(tmp_path)), data_dir=data_dir,
                                      manifest=manifest, manifest_sha256=manifest_sha256(data_dir))
    ckpt.save(tmp_path, state=ckpt.TrainingState(generator=generator, critic=critic, g_optimizer=g_opt, d_optimizer=d_opt, fixed_z=torch.zeros(1, 16)), step=2, cfg=cfg, mlflow_run_id=run_id)
    tracking.log_generator_model(run_id, ckpt.load(tmp_path))
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def test_augment_runs_its_arms_as_ray_tasks_into_one_mlflow_run(labelled_with_test, ray_session, mlflow_store,
                                                                  tmp_path):
    wgan_gp = conditional_run(labelled_with_test, "wgan-gp", tmp_path)
    gan = conditional_run(labelled_with_test, "gan", tmp_path)

    result = augment_experiment(labelled_with_test, options=AugmentOptions(real_per_class=3, synthetic_per_class=2, seeds=2, steps=20), runs=[wgan_gp, gan])
    assert set(result.summary) == {"real", "with-wgan-gp", "with-gan", "only-wgan-gp", "only-gan"}
    assert sorted((r["arm"], r["seed"], r["train_images"]) for r in result.rows) == [
        ("only-gan", 0, 20), ("only-gan", 1, 20), ("only-wgan-gp", 0, 20), ("only-wgan-gp", 1, 20),
        ("real", 0, 30), ("real", 1, 30), ("with-gan", 0, 50), ("with-gan", 1, 50),
        ("with-wgan-gp", 0, 50), ("with-wgan-gp", 1, 50)]
    assert all(0 <= r["accuracy"] <= 1 for r in result.rows)

    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["arm.with-gan"] == gan
    (read,) = run.inputs.dataset_inputs  # the dataset it read
    assert (read.dataset.name, read.dataset.digest) == ("fashion-mnist-28px", manifest_sha256(labelled_with_test)[:16])
    assert json.loads(read.dataset.source) == {"uri": labelled_with_test}
    assert run.data.metrics["accuracy/with-wgan-gp/mean"] == pytest.approx(result.summary["with-wgan-gp"][0])
    table = list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{result.run_id}/augment.csv"))))
    assert len(table) == 10
    # the synthetic-only arm is the generator's classification accuracy score, kept on its run too
    assert client.get_run(gan).data.metrics["eval/classification_accuracy_score"] == pytest.approx(
        result.summary["only-gan"][0])
    assert {a.path for a in client.list_artifacts(result.run_id)} >= {"augment.csv", "augment.png"}

    with pytest.raises(UserError, match="more than the train split holds"):
        augment_experiment(labelled_with_test, options=AugmentOptions(real_per_class=1000), runs=[])
    with pytest.raises(UserError, match="not a class-conditional run"):
        augment_experiment(labelled_with_test, options=AugmentOptions(real_per_class=1), runs=[result.run_id])
    bad = CliRunner().invoke(app, ["experiment", "augment", "--data", labelled_with_test, "--real-per-class", "0"])
    assert bad.exit_code == 2 and "--real-per-class" in bad.output


def test_runs_that_share_a_loss_get_an_arm_each_and_a_run_given_twice_is_refused(labelled_with_test, mlflow_store):
    from pipelines.augment import arm_labels

    assert arm_labels({"a" * 32: "wgan-gp", "b" * 32: "gan"}) == {"a" * 32: "wgan-gp", "b" * 32: "gan"}
    assert arm_labels({"a" * 32: "wgan-gp", "b" * 32: "wgan-gp", "c" * 32: "gan"}) == {
        "a" * 32: "wgan-gp-aaaaaaaa", "b" * 32: "wgan-gp-bbbbbbbb", "c" * 32: "gan"}
    with pytest.raises(UserError, match="given twice"):
        augment_experiment(labelled_with_test, options=AugmentOptions(real_per_class=1), runs=["a" * 32, "a" * 32])
