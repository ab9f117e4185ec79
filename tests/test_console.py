"""What a user sees: the MLflow UI link a command ends with, the dataset a run shows, a model logged without warnings."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import pipelines.train
from pipelines import tracking
from pipelines.cli import app
from wgan.config import RunSettings, TrainConfig
from wgan.data.manifest import manifest_sha256
from wgan.images import to_uint8
from wgan.networks import build_generator

VIEW = "?workflowType=machine_learning"


def new_run(experiment: str = "t") -> tuple[str, str]:
    client = MlflowClient()
    run = client.create_run(tracking.experiment_id(client, experiment))
    return run.info.experiment_id, run.info.run_id


def test_a_local_store_gets_the_run_url_of_a_local_ui_and_the_command_that_starts_it(mlflow_store):
    experiment, run_id = new_run()
    url = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run_id}{VIEW}"
    assert tracking.ui_url(run_id) == url
    assert tracking.ui_hint(run_id) == [f"start the UI: mlflow ui --backend-store-uri {mlflow_store}",
                                        f"open the run: {url}"]


@pytest.mark.parametrize("uri, base", [("http://127.0.0.1:5123", "http://127.0.0.1:5123"),
                                       ("https://me:secret@127.0.0.1:8443/mlflow/", "https://127.0.0.1:8443/mlflow")])
def test_a_tracking_server_gets_its_own_url_and_no_ui_to_start(uri, base, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # nothing listens there: building the URL needs no server
    assert tracking.ui_hint("abc", experiment_id="7") == [f"open the run: {base}/#/experiments/7/runs/abc{VIEW}"]


def test_train_ends_with_the_ui_url_of_its_run(mlflow_store, monkeypatch):
    experiment, run_id = new_run("wganctl")
    monkeypatch.setattr(pipelines.train, "train", lambda *args, **kwargs: SimpleNamespace(
        run_id=run_id, steps=4, final_grid="grid.png", model_uri=f"runs:/{run_id}/generator"))
    result = CliRunner().invoke(app, ["train", "--data", "anywhere", "--steps", "4"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-2:] == tracking.ui_hint(run_id)
    assert result.stdout.strip().endswith(f"/#/experiments/{experiment}/runs/{run_id}{VIEW}")


def test_a_train_run_shows_its_prepared_dataset(mlflow_store, tmp_path):
    manifest = {"format_version": 1, "dataset": "fashion-mnist", "splits": ["train", "test"], "count": 70000,
                "size": 28, "channels": 1, "class_names": [str(k) for k in range(10)], "shards": []}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(manifest))
    data_dir, sha256 = str(tmp_path / "data"), manifest_sha256(str(tmp_path / "data"))
    client = MlflowClient()
    run_id = tracking.start_train_run(client, "t", TrainConfig(image_size=28, channels=1).resolved(), RunSettings(),
                                      data_dir=data_dir, manifest=manifest, manifest_sha256=sha256)

    (logged,) = client.get_run(run_id).inputs.dataset_inputs
    dataset = logged.dataset
    assert (dataset.name, dataset.digest) == ("fashion-mnist-28px", sha256[:tracking.DATASET_DIGEST_CHARS])
    assert (dataset.source_type, json.loads(dataset.source)) == ("local", {"uri": data_dir})
    assert [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]] == ["image", "label", "split"]
    assert json.loads(dataset.profile) == {"images": 70000, "classes": 10, "splits": ["train", "test"],
                                           "image_size": 28, "channels": 1}
    assert {t.key: t.value for t in logged.tags} == {"mlflow.data.context": "training"}


def test_the_generator_model_logs_without_warnings_and_samples_the_class_asked_for(mlflow_store):
    cfg = TrainConfig(loss="wgan-gp", width=8, z_dim=16, image_size=28, channels=1, num_classes=3,
                      conditional=True).resolved()
    generator = build_generator(cfg)
    _, run_id = new_run()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        uri = tracking.log_generator_model(run_id, {"config": cfg.to_dict(), "generator": generator.state_dict(),
                                                    "generator_ema": None, "step": 0})
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []

    model = mlflow.pyfunc.load_model(uri)
    z = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    for label in (0, 2):
        with torch.no_grad():
            expected = to_uint8(generator.eval()(torch.as_tensor(z), torch.full((4,), label)))
        drawn = model.predict(z, params={"label": label})
        assert drawn.shape == (4, 28, 28, 1) and drawn.dtype == np.uint8
        assert np.abs(drawn.astype(int) - expected.astype(int)).max() <= 1
    assert not np.array_equal(model.predict(z, params={"label": 0}), model.predict(z, params={"label": 2}))
