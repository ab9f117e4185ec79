"""The synthetic-data experiment end to end: two conditional runs (WGAN-GP, standard GAN), three arms, Ray tasks, MLflow."""

from __future__ import annotations

import csv
import io

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pipelines.augment import augment_experiment
from pipelines.cli import app
from pipelines.prepare import prepare
from pipelines.train import train
from wgan.config import TrainConfig
from wgan.errors import UserError


@pytest.fixture(scope="module")
def labelled_with_test(tmp_path_factory, ray_session) -> str:
    """400 real Fashion-MNIST images drawn from both splits (about 343 train, 57 test)."""
    out = tmp_path_factory.mktemp("data") / "fmnist-both"
    return prepare("fashion-mnist", size=28, limit=400, seed=3, out=str(out), progress=False).out


def test_augment_runs_three_arms_as_ray_tasks_into_one_mlflow_run(labelled_with_test, ray_session, mlflow_store):
    small = dict(steps=2, width=8, z_dim=16, batch=16, log_every=1, sample_every=2, checkpoint_every=2,
                 conditional=True)
    wgan_gp = train(TrainConfig(loss="wgan-gp", **small), labelled_with_test, experiment="t", progress=False).run_id
    gan = train(TrainConfig(loss="gan", **small), labelled_with_test, experiment="t", progress=False).run_id

    result = augment_experiment(labelled_with_test, real_per_class=3, runs=[wgan_gp, gan], synthetic_per_class=2,
                                seeds=2, steps=20)
    assert set(result.summary) == {"real", "with-wgan-gp", "with-gan"}
    assert sorted((r["arm"], r["seed"], r["train_images"]) for r in result.rows) == [
        ("real", 0, 30), ("real", 1, 30), ("with-gan", 0, 50), ("with-gan", 1, 50),
        ("with-wgan-gp", 0, 50), ("with-wgan-gp", 1, 50)]
    assert all(0 <= r["accuracy"] <= 1 for r in result.rows)

    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["arm.with-gan"] == gan
    assert run.data.metrics["accuracy/with-wgan-gp/mean"] == pytest.approx(result.summary["with-wgan-gp"][0])
    table = list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{result.run_id}/augment.csv"))))
    assert len(table) == 6
    assert {a.path for a in client.list_artifacts(result.run_id)} >= {"augment.csv", "augment.png"}

    with pytest.raises(UserError, match="more than the train split holds"):
        augment_experiment(labelled_with_test, real_per_class=1000, runs=[])
    with pytest.raises(UserError, match="not a class-conditional run"):
        augment_experiment(labelled_with_test, real_per_class=1, runs=[result.run_id])
    bad = CliRunner().invoke(app, ["experiment", "augment", "--data", labelled_with_test, "--real-per-class", "0"])
    assert bad.exit_code == 2 and "--real-per-class" in bad.output
