"""The evaluate stage end to end: a real train run and classifier run in a real MLflow store, metrics and pictures logged."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from pipelines.classifier import features_and_logits, load_classifier, train_classifier
from pipelines.cli import app
from pipelines.evaluate import draw_samples, evaluate
from pipelines.train import train
from wgan.config import TrainConfig
from wgan.data.reader import ShardReader, pixels_to_tensor
from wgan.errors import UserError
from wgan.metrics import frechet_distance

TINY = TrainConfig(loss="wgan-gp", steps=4, width=8, z_dim=16, batch=16, log_every=2, sample_every=2, checkpoint_every=2)
N = 200


def test_evaluate_logs_metrics_and_pictures_into_the_run(tiny_dataset, ray_session, mlflow_store, tmp_path):
    run_id = train(TINY, tiny_dataset, experiment="t", progress=False).run_id
    classifier_run = train_classifier(tiny_dataset, epochs=1, test_split="train", progress=False).run_id

    result = evaluate(run_id, n=N, metrics=("fid", "kid", "pr", "coverage", "is"), classifier_run=classifier_run)

    client = MlflowClient()
    run = client.get_run(run_id)
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")}
    assert logged == pytest.approx(result.metrics)
    assert set(logged) == {"eval/fid", "eval/kid_mean", "eval/kid_std", "eval/precision", "eval/recall",
                           "eval/coverage_classes", "eval/coverage_min_share", "eval/is_mean", "eval/is_std"}
    assert [m.step for m in client.get_metric_history(run_id, "eval/fid")] == [4]  # the run's completed step
    assert 0 <= logged["eval/precision"] <= 1 and 0 <= logged["eval/recall"] <= 1
    assert logged["eval/coverage_classes"] in range(11) and 1 <= logged["eval/is_mean"] <= 10
    assert run.data.tags["eval.classifier_run"] == classifier_run and run.data.tags["eval.n"] == str(N)

    # The logged FID is the Frechet distance of the run's samples to every dataset image, in classifier features;
    # real images sit far closer to the reference than a 4-step generator's samples do.
    classifier = load_classifier(classifier_run)
    real_features, _ = features_and_logits(classifier, (x for x, _ in ShardReader(tiny_dataset, 128, shuffle=False)))
    sample_features, _ = features_and_logits(classifier, [pixels_to_tensor(draw_samples(run_id, N, seed=0))])
    assert logged["eval/fid"] == pytest.approx(frechet_distance(sample_features, real_features), rel=1e-4)
    assert frechet_distance(real_features[:N], real_features) < logged["eval/fid"] / 3

    cache = Path(result.reference)
    assert cache == Path(tiny_dataset) / "reference" / f"classifier-{classifier_run}.npz"
    np.testing.assert_allclose(np.load(cache)["features"], real_features, rtol=1e-4, atol=1e-5)

    artifacts = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert artifacts == {"eval/grid.png", "eval/nearest_neighbours.png", "eval/class_histogram.png"}
    neighbours = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/eval/nearest_neighbours.png", dst_path=str(tmp_path))
    assert Image.open(neighbours).size == (6 * 28 + 7 * 2, 8 * 28 + 9 * 2)  # each sample beside its 5 nearest images

    # Again through the CLI, with the classifier found by dataset: same latents, same number; the cache is reused.
    cached_at = os.stat(cache).st_mtime_ns
    cli = CliRunner().invoke(app, ["evaluate", run_id, "--n", str(N), "--metrics", "fid"])
    assert cli.exit_code == 0, cli.output
    assert os.stat(cache).st_mtime_ns == cached_at
    assert [m.value for m in client.get_metric_history(run_id, "eval/fid")] == pytest.approx([logged["eval/fid"]] * 2)

    compared = CliRunner().invoke(app, ["compare", run_id, "--out", str(tmp_path / "compare.png")])
    assert compared.exit_code == 0, compared.output
    assert "fid" in compared.output and run_id[:12] in compared.output
    assert Image.open(tmp_path / "compare.png").size[0] > 0

    with pytest.raises(UserError, match="not a wganctl training run"):
        evaluate(classifier_run, n=N)
    bad = CliRunner().invoke(app, ["evaluate", run_id, "--metrics", "fid,sharpness"])
    assert bad.exit_code == 2 and "unknown metric(s) sharpness" in bad.output


def test_classifier_refuses_a_missing_test_split(tiny_dataset, mlflow_store):
    with pytest.raises(UserError, match="no 'test' split"):
        train_classifier(tiny_dataset, epochs=1, progress=False)


def test_compare_refuses_a_run_without_evaluation(mlflow_store):
    with mlflow.start_run() as run:
        pass
    result = CliRunner().invoke(app, ["compare", run.info.run_id])
    assert result.exit_code == 2 and "wganctl evaluate" in result.output
