"""What a user sees: the MLflow UI link a command ends with, the dataset a run shows, a model logged without
warnings, progress as a bar on a terminal and as a plain line now and then elsewhere (a command's whole console,
redirected to a file, is checked by tests/test_train.py's first test)."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
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
from pipelines.cluster.progress import StageProgress, train_stats
from wgan.config import RunSettings, TrainConfig
from wgan.data.manifest import manifest_sha256
from wgan.images import to_uint8
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers

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
    monkeypatch.setattr(pipelines.train, "train", lambda *args, **kwargs: pipelines.train.TrainResult(
        run_id=run_id, steps=4, final_grid="grid.png", model_uri=f"runs:/{run_id}/generator", checkpoint_dir="c",
        tracking_uri=mlflow_store))
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


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain_progress(total: int, clock: FakeClock, **kwargs) -> tuple[StageProgress, io.StringIO]:
    stream = io.StringIO()
    return StageProgress("train", total, "step", stream=stream, terminal=False, clock=clock, **kwargs), stream


def test_off_a_terminal_progress_is_a_plain_line_every_tenth_of_the_run_and_at_its_end():
    clock = FakeClock()
    progress, stream = plain_progress(100, clock, describe=train_stats)
    with progress:
        for step in range(1, 101):
            clock.now += 1.0  # a tenth takes 10 s: the 30 s rule never comes first
            progress.update(step, wasserstein_estimate=0.5, **{"loss/critic": -0.25, "loss/generator": 1.0,
                                                                "throughput/images_per_s": 640.0})
    lines = stream.getvalue().splitlines()
    assert [int(line.split()[2].split("/")[0]) for line in lines] == list(range(10, 101, 10))
    assert lines[4] == "train: step 50/100 (50%)  W +0.500  D -0.250  G +1.000  640 img/s  ETA 0:00:50"
    assert lines[-1].endswith("(100%)  W +0.500  D -0.250  G +1.000  640 img/s  ETA 0:00:00")


@pytest.mark.parametrize("loss, label", [("wgan-gp", "W "), ("wgan", "W "), ("hinge", "D(real)-D(fake) "),
                                         ("gan", "D(real)-D(fake) ")])
def test_the_critic_gap_is_labelled_w_only_under_a_wasserstein_loss(loss, label):
    """The step names the gap by the loss (`wgan.losses.gap_metric`), and the progress line labels it so."""
    cfg = TrainConfig(loss=loss, image_size=28, channels=1, width=4, z_dim=8, batch=4, n_critic=1).resolved()
    generator, critic = build_generator(cfg), build_critic(cfg)
    step = TrainStep(cfg, generator, critic, *build_optimizers(cfg, generator, critic), precision_mode="fp32")
    stats = {k: v.item() for k, v in step([(torch.rand(4, 1, 28, 28) * 2 - 1, None)]).items()}
    assert ("wasserstein_estimate" in stats) == (loss in ("wgan", "wgan-gp")) != ("critic_gap" in stats)
    assert train_stats(stats).startswith(label)


def test_off_a_terminal_a_slow_run_gets_a_line_every_30_s():
    clock = FakeClock()
    progress, stream = plain_progress(1000, clock)
    with progress:
        for step in range(1, 11):
            clock.now += 10.0
            progress.update(step)
        progress.update(1000)
    assert [line.split()[2] for line in stream.getvalue().splitlines()] == ["3/1000", "6/1000", "9/1000", "1000/1000"]


def test_on_a_terminal_progress_is_a_bar_and_no_plain_lines():
    stream = io.StringIO()
    with StageProgress("prepare", 4, "shards", stream=stream, terminal=True) as progress:
        for _ in range(4):
            progress.advance()
    assert progress.done == 4 and "prepare" in stream.getvalue()
    assert not re.search(r"^prepare: shards \d", stream.getvalue(), re.MULTILINE)


def test_off_a_terminal_a_sweep_is_a_plain_line_of_trials_ended_and_the_best_objective(monkeypatch):
    from pipelines.objective import METRIC
    from pipelines.tune.callbacks import TrialProgress

    printed = io.StringIO()
    monkeypatch.setattr("sys.stdout", printed)
    callback = pickle.loads(pickle.dumps(TrialProgress(2)))  # Tune saves its callbacks with the sweep's state
    callback.setup()
    trials = [SimpleNamespace(trial_id="a", status="RUNNING"), SimpleNamespace(trial_id="b", status="RUNNING")]
    callback.on_trial_result(1, trials, trials[0], {METRIC: 12.5})
    callback.on_trial_complete(1, trials, trials[0])  # Tune sets the status after the callback
    trials[0].status = "TERMINATED"
    callback.on_trial_error(2, trials, trials[1])
    pickle.dumps(callback)
    assert [re.sub(r"  ETA .*", "", line) for line in printed.getvalue().splitlines()] == [
        "tune: trials ended 1/2 (50%)  1 running  best Frechet distance 12.500",
        "tune: trials ended 2/2 (100%)  0 running  best Frechet distance 12.500"]


def test_ray_cores_actor_pool_notice_is_left_out_of_stderr_and_the_rest_passes(capfd):
    """Ray core writes it in C++ straight to file descriptor 2, so the filter works on the descriptor."""
    from pipelines.cluster.console import ray_notices_filtered

    notice = (b"[2026-12-07 23:53:31,098 E 16424 16424] core_worker.cc:2465: Actor with class name: "
              b"'MapWorker(MapBatches(SampleAndEmbed))' and ID: 'bb1d' has constructor arguments in the object store "
              b"and max_restarts > 0. ... See https://github.com/ray-project/ray/issues/53727 for more details.\n")
    with ray_notices_filtered(enabled=True):
        os.write(2, b"before\n" + notice + b"[2026-12-07 E] core_worker.cc:1: something else\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "before\n[2026-12-07 E] core_worker.cc:1: something else\nafter\n"
    with ray_notices_filtered(enabled=False):  # --verbose: Ray's own console, as it is
        os.write(2, notice)
    assert capfd.readouterr().err == notice.decode()
