"""The main job ends measured (issue 30): `quickstart` prepares the train and test splits, trains the
project classifier when the store has none, trains the GAN with its FD curve and prints the final and
best FD; `wganctl evaluate RUN` then works with no other command, and its console, redirected to a
file, carries only our lines."""

from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import pipelines.quickstart
from pipelines.cli import app
from pipelines.tracking import run_tags
from tests.processes import wganctl_to_files

pytestmark = pytest.mark.slow

# Lines that are not ours: Ray's and MLflow's loggers (Python or C++: "[2026-... E ... core_worker.cc"),
# a worker's prefixed output, warnings
NOT_OURS = re.compile(r"^\(.*pid=|INFO|WARNING|ERROR|Warning|core_worker|^\[\d{4}-\d\d-\d\d|Downloading artifacts")


def test_quickstart_ends_measured_and_evaluate_then_needs_nothing_else(ray_session, mlflow_store, tmp_path,
                                                                       monkeypatch):
    # The real stages on fewer images and steps: 600 of Fashion-MNIST's 70,000, one classifier epoch
    real_prepare = pipelines.quickstart.prepare
    monkeypatch.setattr(pipelines.quickstart, "prepare",
                        lambda *args, options, **kwargs: real_prepare(*args, options=options.replace(limit=600), **kwargs))
    monkeypatch.setattr(pipelines.quickstart, "CLASSIFIER_EPOCHS", 1)
    res = CliRunner().invoke(app, ["quickstart", "--steps", "4", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "training one (1 epochs)" in res.output  # the store had no classifier
    run_id = re.search(r"^MLflow run:\s+(\w+)", res.output, re.MULTILINE).group(1)
    best = re.search(r"^Frechet distance: (\d+\.\d{3}) at the end, best (\d+\.\d{3}) at step 4 ", res.output,
                     re.MULTILINE)
    assert best, res.output
    client = MlflowClient()
    run = client.get_run(run_id)
    assert [m.value for m in client.get_metric_history(run_id, "eval/fd")] == [pytest.approx(float(best.group(1)),
                                                                                             abs=1e-3)]
    assert run.data.tags[run_tags.BEST_STEP] == "4"
    assert run.data.params["data_dir"].endswith("/data/fashion-mnist-28px")  # train and test splits
    (classifier,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                       filter_string=f"tags.`{run_tags.STAGE}` = 'classifier'")
    assert run.data.params["classifier"] == classifier.info.run_id
    assert classifier.data.metrics["fd_test_vs_train"] > 0  # measured on the test split it prepared

    # A second quickstart would find that classifier; evaluate needs nothing else, and prints only our lines
    stdout, stderr = wganctl_to_files(["evaluate", run_id, "--n", "100"], tmp_path, MLFLOW_TRACKING_URI=mlflow_store)
    lines = stdout.splitlines() + stderr.splitlines()
    assert [line for line in lines if NOT_OURS.search(line)] == [] and stderr == "", stdout + stderr
    assert re.search(r"^eval/fid\s+\d", stdout, re.MULTILINE), stdout
