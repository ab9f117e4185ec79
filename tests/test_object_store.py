"""Every stage on an object store, as a cluster user runs them: data, checkpoints, sweeps and
MLflow's artifacts in one bucket of a real S3 API (moto's standalone server on 127.0.0.1,
from the `object_store` fixture), a real local Ray, and a real `wganctl server` whose
artifacts go to the bucket. Clients find the server the standard way (AWS_ENDPOINT_URL,
MLFLOW_S3_ENDPOINT_URL); the bucket is read back through boto3, not through our code.
"""

from __future__ import annotations

import json
import os
import signal
import time

import boto3
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pipelines.classifier import train_classifier
from pipelines.cli import app
from pipelines.train import Resume, train
from pipelines.search_space import SweepSettings
from pipelines.tune import tune_sweep
from tests.object_store import bucket_keys, new_bucket
from tests.processes import TrackingServer
from tests.processes import InBackground, train_worker_pids
from wgan.config import RunSettings, TrainConfig
from wgan.data.manifest import load_manifest
from pipelines.stage_options import ClassifierOptions

pytestmark = pytest.mark.slow

TINY = dict(width=8, z_dim=16, batch=16, n_critic=1)


@pytest.fixture(scope="module")
def bucket(object_store) -> str:
    """One bucket for the whole end-to-end run (the server's artifacts go to it too)."""
    return new_bucket(object_store)


@pytest.fixture(scope="module")
def server_on_s3(tmp_path_factory, bucket):
    """`wganctl server` storing every run's artifacts under s3://<bucket>/mlflow."""
    server = TrackingServer(tmp_path_factory.mktemp("tracking"), "--artifacts-destination", f"{bucket}/mlflow").start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def registered_steps(bucket: str, run_dir: str) -> list[int]:
    """Checkpoint steps Ray Train has registered for a run (its snapshot in the bucket)."""
    key = f"{run_dir}/checkpoint_manager_snapshot.json"
    try:
        body = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).get_object(Bucket=bucket.removeprefix("s3://"), Key=key)["Body"].read()
        state = json.loads(body)
    except Exception:  # not written yet, or being rewritten
        return []
    return [int(c["checkpoint_dir_name"].split("_")[-1]) for c in state["checkpoint_results"]]


@pytest.mark.timeout(900)
def test_every_stage_keeps_its_data_checkpoints_and_artifacts_in_one_bucket(
        bucket, server_on_s3, ray_session, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server_on_s3.uri)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    # prepare: shards and manifest land in the bucket; a re-run does nothing; a refused run
    # leaves nothing behind; --force replaces the dataset file by file, manifest last.
    data = f"{bucket}/data/fm"
    prepare = ["prepare", "fashion-mnist", "--size", "28", "--split", "train", "--limit", "512", "--out", data, "--quiet"]
    done = runner.invoke(app, prepare)
    assert done.exit_code == 0, done.output

    def dataset_keys() -> list[str]:
        return sorted(["data/fm/manifest.json"] + [f"data/fm/{s['path']}" for s in load_manifest(data)["shards"]])

    def stored_keys() -> list[str]:
        """The bucket's objects under data/, without the empty `dir/` markers pyarrow writes for directories."""
        return [key for key in bucket_keys(bucket, "data/") if not key.endswith("/")]

    first = dataset_keys()
    assert stored_keys() == first
    again = runner.invoke(app, prepare)
    assert again.exit_code == 0 and "is up to date" in again.output, again.output
    refused = runner.invoke(app, [*prepare, "--seed", "1"])
    assert refused.exit_code == 2 and "other parameters" in refused.output, refused.output
    assert stored_keys() == first
    rebuilt = runner.invoke(app, [*prepare, "--seed", "1", "--force"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert load_manifest(data, verify=True)["params"]["seed"] == 1
    assert stored_keys() == dataset_keys()
    assert not [key for key in bucket_keys(bucket, "data/") if ".tmp-" in key or ".old-" in key]

    classifier_run = train_classifier(data, options=ClassifierOptions(epochs=1, test_split="train"), progress=False).run_id

    # train from the bucket into the bucket on two workers; both are killed after checkpoint 20
    # is registered, and the run goes on from that checkpoint, read back from the bucket.
    storage = f"{bucket}/ckpt"
    cfg = TrainConfig(loss="wgan-gp", steps=60, **TINY)
    settings = RunSettings(workers=2, log_every=2, sample_every=30, checkpoint_every=10, storage_path=storage,
                           max_failures=1)
    training = InBackground(train, cfg, data, run=settings, experiment="s3", progress=False)
    client = MlflowClient()
    deadline = time.time() + 300
    run_id = None
    while time.time() < deadline:
        runs = client.search_runs([client.get_experiment_by_name("s3").experiment_id]) if client.get_experiment_by_name("s3") else []
        run_id = runs[0].info.run_id if runs else None
        if run_id and max(registered_steps(bucket, f"ckpt/wganctl-{run_id}"), default=0) >= 20:
            break
        time.sleep(0.3)
    else:
        pytest.fail("checkpoint 20 was never registered in the bucket")
    pids = train_worker_pids()
    assert len(pids) == 2, pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    result = training.result(timeout=400)
    assert result.run_id == run_id and result.steps == 60
    assert result.checkpoint_dir == f"{storage}/wganctl-{run_id}/checkpoint_0000060"
    resumed = [int(m.value) for m in client.get_metric_history(run_id, "train/resumed_from_step")]
    assert len(resumed) == 1 and resumed[0] >= 20 and resumed[0] % 10 == 0
    checkpoint_keys = bucket_keys(bucket, f"ckpt/wganctl-{run_id}/")
    for step in range(10, 61, 10):
        assert f"ckpt/wganctl-{run_id}/checkpoint_{step:07d}/checkpoint.pt" in checkpoint_keys

    # --resume continues the same run from its last checkpoint in the bucket.
    continued = train(resume=Resume(run_id, steps=70), progress=False)
    assert continued.run_id == run_id and continued.steps == 70
    assert [int(m.value) for m in client.get_metric_history(run_id, "train/resumed_from_step")][-1] == 60
    assert sorted({m.step for m in client.get_metric_history(run_id, "loss/generator")}) == list(range(1, 71))

    # evaluate an early checkpoint, read from the bucket; the reference cache is written beside the data.
    evaluated = runner.invoke(app, ["evaluate", run_id, "--n", "100", "--metrics", "fid", "--checkpoint", "20",
                                    "--classifier", classifier_run])
    assert evaluated.exit_code == 0, evaluated.output
    assert 20 in {m.step for m in client.get_metric_history(run_id, "eval/fid")}
    assert f"data/fm/reference/classifier-{classifier_run}.npz" in bucket_keys(bucket, "data/fm/reference/")

    # tune: trials checkpoint into the bucket, Tune keeps its state there, the best is registered.
    sweep = tune_sweep(data, sweep=SweepSettings(trials=1, steps=4, reports=2, scheduler="none", objective_samples=64,
                                                 seed=0, register="wgan-s3", storage_path=f"{bucket}/sweeps",
                                                 classifier=classifier_run),
                       experiment="s3-tune", base=TrainConfig(**TINY))
    assert sweep.registered_version == "1" and sweep.best_run_id
    assert all(row["status"] == "finished" for row in sweep.trials), sweep.trials
    sweep_keys = bucket_keys(bucket, "sweeps/")
    assert any(k.startswith(f"sweeps/wganctl-tune-{sweep.parent_run_id}/") for k in sweep_keys)
    assert any(k.startswith(f"sweeps/wganctl-{sweep.best_run_id}/checkpoint_") for k in sweep_keys)
    registered = mlflow.pyfunc.load_model("models:/wgan-s3/1")
    images = registered.predict(np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32))
    assert images.shape == (3, 28, 28, 1) and images.dtype == np.uint8

    # The tracking server put the runs' grids and models in the bucket, not on its disk.
    artifact_keys = bucket_keys(bucket, "mlflow/")
    assert any(k.endswith(f"{run_id}/artifacts/samples/step_000030.png") for k in artifact_keys), artifact_keys[:20]
    assert sum(k.endswith("/MLmodel") for k in artifact_keys) >= 3  # classifier, the run's generator, the best trial's
    assert not (server_on_s3.workdir / "mlartifacts").exists()


class _RecordingFilesystem:
    """The real S3 filesystem, with the order of its moves written down."""

    def __init__(self, filesystem):
        self.filesystem, self.moves = filesystem, []

    def move(self, source: str, destination: str) -> None:
        self.moves.append((source, destination))
        self.filesystem.move(source, destination)

    def __getattr__(self, name):
        return getattr(self.filesystem, name)


def test_publishing_on_s3_moves_a_new_manifest_last_and_an_old_one_first(s3_bucket):
    """Object stores cannot rename a directory: `prepare` moves file by file, so that a reader
    never finds a manifest whose shards are not all there (docs/architecture.md, section 1)."""
    from pipelines import prepare as prepare_module
    from wgan.data import fs as datafs

    filesystem, root = datafs.resolve(f"{s3_bucket}/data")
    for build, body in (("fm", b"old"), ("fm.tmp-1", b"new")):
        for name in ("part-00000.parquet", "manifest.json", "part-00001.parquet"):
            with filesystem.open_output_stream(f"{root}/{build}/{name}") as out:
                out.write(body)
    recording = _RecordingFilesystem(filesystem)
    prepare_module._publish(recording, f"{root}/fm.tmp-1", f"{root}/fm")

    aside = [(s, d) for s, d in recording.moves if "/fm/" in s]
    into = [(s, d) for s, d in recording.moves if ".tmp-1/" in s]
    assert len(aside) == 3 and aside[0][0].endswith("/fm/manifest.json")  # the old dataset stops being one first
    assert len(into) == 3 and into[-1][1].endswith("/fm/manifest.json")  # the new one becomes one last
    assert recording.moves.index(aside[-1]) < recording.moves.index(into[0])
    stored = [key for key in bucket_keys(s3_bucket, "data/") if not key.endswith("/")]
    assert stored == ["data/fm/manifest.json", "data/fm/part-00000.parquet", "data/fm/part-00001.parquet"]
    with filesystem.open_input_stream(f"{root}/fm/manifest.json") as handle:
        assert handle.read() == b"new"
