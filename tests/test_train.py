"""The train stage end to end: real local Ray Train, real MLflow sqlite store, real parquet shards."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.cluster.checkpoints import run_checkpoints
from tests.processes import InBackground, train_worker_pids, wganctl_to_files
from pipelines.train import TrainingFailed, logged_run_settings, train
from wgan import checkpoint as ckpt
from wgan.config import RunSettings, TrainConfig
from wgan.images import to_uint8
from wgan.networks import build_critic, build_generator
from wgan.data.manifest import manifest_sha256

SMALL = dict(width=8, z_dim=16, batch=16)
EVERY_2 = RunSettings(log_every=2, sample_every=2, checkpoint_every=2)


def metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# What Ray's and MLflow's own loggers print: worker output, log records, warnings, download bars.
NOT_OURS = re.compile(r"^\(.*pid=|INFO|WARNING|UserWarning|Downloading artifacts")
PLAIN_PROGRESS = re.compile(r"^train: step \d+/4 \(\d+%\)  W [+-]\d+\.\d{3}  D .*  \d+ img/s  ETA \d+:\d\d:\d\d$")


def test_train_run_is_logged_whole_shows_only_our_lines_and_its_model_samples(tiny_dataset, ray_session,
                                                                              mlflow_store, tmp_path):
    # From the command line, stdout and stderr to files (as `wganctl train > log`), on a local Ray of its own
    # (as a user's first run: its start-up's logging too; its workers run this checkout's code).
    # g_ema 0.5: a moving average that differs visibly from the last weights after 4 steps
    stdout, stderr = wganctl_to_files(
        ["train", "--data", tiny_dataset, "--loss", "wgan-gp", "--steps", "4", "--g-ema", "0.5", "--width", "8",
         "--z-dim", "16", "--batch", "16", "--log-every", "2", "--sample-every", "2", "--checkpoint-every", "2",
         "--experiment", "t"],
        tmp_path, MLFLOW_TRACKING_URI=mlflow_store)
    run_id = re.search(r"^run (\w+): 4 steps", stdout, re.MULTILINE).group(1)
    # Our lines only: a plain progress line per half of the run (no terminal, no bar), the result, the run's URL.
    lines = stdout.splitlines() + stderr.splitlines()
    assert [line for line in lines if NOT_OURS.search(line)] == [] and stderr == ""
    assert len([line for line in lines if PLAIN_PROGRESS.match(line)]) == 2, stdout
    assert re.search(rf"^open the run: http://127\.0\.0\.1:5000/#/experiments/\d+/runs/{run_id}"
                     rf"\?workflowType=machine_learning$", stdout, re.MULTILINE), stdout
    result = SimpleNamespace(run_id=run_id, checkpoint_dir=run_checkpoints(str(tmp_path / "ray_results"), run_id)[-1])

    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    # Rank 0's machine, by MLflow's system-metrics monitor: at least the sample it logs as it stops.
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    params = run.data.params
    # the paper's WGAN-GP defaults, resolved and logged whole
    assert (params["loss"], params["lr"], params["n_critic"], params["lambda_gp"]) == ("wgan-gp", "0.0001", "5", "10.0")
    assert json.loads(params["betas"]) == [0.0, 0.9]
    assert (params["image_size"], params["channels"], params["critic_norm"]) == ("28", "1", "layer")
    assert run.data.tags["data.manifest_sha256"] == manifest_sha256(tiny_dataset)
    assert run.data.tags["code.version"]
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]  # the run page's Datasets, the Runs table's column
    assert (dataset.name, dataset.digest) == ("fashion-mnist-28px", manifest_sha256(tiny_dataset)[:16])
    assert json.loads(dataset.source) == {"uri": tiny_dataset} and json.loads(dataset.profile)["images"] == 512
    for key in ("loss/critic", "loss/generator", "wasserstein_estimate", "gradient_penalty"):
        assert metric_steps(client, result.run_id, key) == [1, 2, 3, 4], key
    assert metric_steps(client, result.run_id, "throughput/images_per_s") == [2, 4]
    assert all(np.isfinite(m.value) for m in client.get_metric_history(result.run_id, "wasserstein_estimate"))

    artifacts = {a.path for a in client.list_artifacts(result.run_id, "samples")}
    assert artifacts == {"samples/step_000002.png", "samples/step_000004.png"}
    assert {a.path for a in client.list_artifacts(result.run_id, "plots")} == {"plots/loss_curves.png"}
    logged_cfg = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/config.json"))
    assert logged_cfg["lambda_gp"] == 10.0 and logged_cfg["steps"] == 4
    grid_file = mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/samples/step_000004.png", dst_path=str(tmp_path))
    assert Image.open(grid_file).size == (8 * 28 + 9 * 2, 8 * 28 + 9 * 2)  # 64 samples, 8 per row, 2 px padding

    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/generator")
    images = model.predict(np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32))
    assert images.shape == (5, 28, 28, 1) and images.dtype == np.uint8
    assert images.std() > 0  # not a constant picture

    runner = CliRunner()
    out = tmp_path / "s.npy"
    res = runner.invoke(app, ["sample", result.run_id, "--n", "6", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert np.load(out).shape == (6, 28, 28, 1)
    # With --g-ema, what `wganctl sample` draws from is the averaged generator, not the last weights.
    payload = ckpt.load(result.checkpoint_dir)
    z = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))  # sample's latents (seed 0)

    def images_of(weights: dict) -> np.ndarray:
        generator = build_generator(ckpt.config_of(payload))
        generator.load_state_dict(weights)
        with torch.no_grad():
            return to_uint8(generator.eval()(z, None))

    assert params["g_ema"] == "0.5" and payload["generator_ema"] is not None
    assert np.array_equal(np.load(out), images_of(ckpt.sampling_state(payload)))
    assert not np.array_equal(np.load(out), images_of(payload["generator"]))
    strip = tmp_path / "interp.png"
    res = runner.invoke(app, ["interpolate", result.run_id, "--out", str(strip), "--rows", "2", "--steps", "5"])
    assert res.exit_code == 0, res.output
    assert Image.open(strip).size == (5 * 28 + 6 * 2, 2 * 28 + 3 * 2)


def test_resnet_hinge_spectral_norm_diffaugment_and_lr_decay_train_and_log_loadable_models(
        tiny_dataset, ray_session, mlflow_store, tmp_path):
    """The new knobs through the real train stage, in two fits: a conditional ResNet WGAN-GP with a
    spectrally normalised critic, DiffAugment's default policy and linear lr decay; and a DCGAN with
    the hinge loss (spectral norm by default) and DiffAugment's translation alone. Resuming with the
    schedule is test_resume_continues_...'s (it adds no fit), as is DDP with augmentation."""
    from pipelines.tracking import load_generator

    client = MlflowClient()
    runs = {
        "resnet": TrainConfig(arch="resnet", loss="wgan-gp", critic_norm="spectral", augment="diffaug",
                              lr_decay="linear", conditional=True, steps=2, n_critic=1, **SMALL),
        "hinge": TrainConfig(loss="hinge", augment="diffaug:translation", steps=2, n_critic=1, **SMALL),
    }
    for name, cfg in runs.items():
        result = train(cfg, tiny_dataset, run=EVERY_2, experiment="t", progress=False)
        params = client.get_run(result.run_id).data.params
        payload = ckpt.load(result.checkpoint_dir)
        critic = build_critic(ckpt.config_of(payload))
        critic.load_state_dict(payload["critic"])  # the spectrally normalised critic, as resume loads it
        assert any(".parametrizations.weight.original" in key for key in payload["critic"]), name
        lrs = [m.value for m in sorted(client.get_metric_history(result.run_id, "train/lr"), key=lambda m: m.step)]
        # the critic gap is a W1 estimate under wgan-gp only; under hinge it is logged as what it is
        gap = {"resnet": "wasserstein_estimate", "hinge": "critic_gap"}[name]
        assert {"wasserstein_estimate", "critic_gap"} & set(client.get_run(result.run_id).data.metrics) == {gap}, name
        if name == "resnet":
            assert (params["arch"], params["critic_norm"], params["augment"], params["lr_decay"]) == (
                "resnet", "spectral", "diffaug", "linear")
            assert params["num_classes"] == "10" and params["width"] == "8"
            assert lrs == pytest.approx([1e-4, 1e-4 * (1 - 1 / 2)])  # steps 1 and 2 of 2
            assert payload["g_scheduler"]["last_epoch"] == payload["d_scheduler"]["last_epoch"] == 2
            # the logged model is the ResNet generator (the DCGAN one's loading is tested above)
            model, z_dim = load_generator(result.run_id)
            images = model.predict(np.random.default_rng(0).standard_normal((3, z_dim)).astype(np.float32),
                                   params={"label": 2})
            assert images.shape == (3, 28, 28, 1) and images.dtype == np.uint8 and images.std() > 0
        else:  # SN-GAN's defaults for the hinge loss
            assert (params["loss"], params["critic_norm"], params["lr"], json.loads(params["betas"])) == (
                "hinge", "spectral", "0.0002", [0.0, 0.9])
            assert params["augment"] == "diffaug:translation" and lrs == [2e-4, 2e-4]


def test_resume_continues_the_same_mlflow_run_and_step_count_on_another_shape(tiny_dataset, ray_session,
                                                                                mlflow_store, tmp_path):
    # a class-conditional wgan run with an auxiliary-classifier critic (the projection critic is
    # the evaluate test's): conditioning is checked below, sharing Ray Train's start-up
    # It also resumes a linear lr decay (its schedule in the checkpoint), and trains two DDP workers
    # with DiffAugment and a spectrally normalised wgan critic (no clipping): their weights must stay equal.
    first = train(TrainConfig(loss="wgan", steps=2, conditional=True, conditioning="aux", lr_decay="linear",
                              augment="diffaug", critic_norm="spectral", **SMALL), tiny_dataset,
                  run=EVERY_2, experiment="t", progress=False)
    # Elastic resume: started on one worker, continued on two, from the command line.
    res = CliRunner().invoke(app, ["train", "--resume", first.run_id, "--steps", "4", "--workers", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"run {first.run_id}: 4 steps" in res.output
    client = MlflowClient()
    assert metric_steps(client, first.run_id, "loss/generator") == [1, 2, 3, 4]  # no step twice
    assert [m.value for m in client.get_metric_history(first.run_id, "train/resumed_from_step")] == [2.0]
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["wganctl.completed_steps"] == "4"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    # The new shape is recorded (params keep the first one: they cannot change) and was used:
    # two workers from step 2, whose weights stayed identical at the checkpoint after it.
    assert run.data.tags["wganctl.resumed_with"] == "step 2: workers=2" and run.data.params["workers"] == "1"
    workers = sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, "train/workers"))
    assert workers == [(0, 1.0), (2, 2.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "ddp/weight_spread")] == [(4, 0.0)]
    # the schedule went on from where the checkpoint left it: 2 steps of a 2-step run, then over 4 steps
    lrs = [m.value for m in sorted(client.get_metric_history(first.run_id, "train/lr"), key=lambda m: m.step)]
    lr = 1e-4  # a spectral-norm wgan critic takes the WGAN-GP paper's Adam (wgan.config.SPECTRAL_WGAN_DEFAULTS)
    assert lrs == pytest.approx([lr, lr * (1 - 1 / 2), lr * (1 - 2 / 4), lr * (1 - 3 / 4)])
    assert logged_run_settings(first.run_id).workers == 2  # what a next --resume starts from

    # Conditional: one grid row per class (10 Fashion-MNIST classes, 8 latents each), and
    # `sample --class K` draws class K (a conditional run keeps the label in its model).
    assert run.data.params["num_classes"] == "10" and run.data.params["conditional"] == "True"
    assert run.data.params["conditioning"] == "aux"
    assert metric_steps(client, first.run_id, "loss/critic_class") == [1, 2, 3, 4]  # the classifier head's loss
    grid_file = mlflow.artifacts.download_artifacts(f"runs:/{first.run_id}/samples/step_000004.png", dst_path=str(tmp_path))
    assert Image.open(grid_file).size == (8 * 28 + 9 * 2, 10 * 28 + 11 * 2)
    runner = CliRunner()
    drawn = {}
    for label in (3, 7):
        res = runner.invoke(app, ["sample", first.run_id, "--n", "4", "--class", str(label), "--out", str(tmp_path / f"{label}.npy")])
        assert res.exit_code == 0, res.output
        drawn[label] = np.load(tmp_path / f"{label}.npy")
    assert not np.array_equal(drawn[3], drawn[7])  # same latents, other class, other images
    bad = runner.invoke(app, ["sample", first.run_id, "--class", "10", "--out", str(tmp_path / "x.png")])
    assert bad.exit_code == 2 and "--class must be in [0, 9]" in bad.output


def test_killed_worker_resumes_from_its_last_checkpoint(tiny_dataset, ray_session, mlflow_store, tmp_path):
    # 100 steps: the kill lands after checkpoint 20 is registered, with 8 checkpoints to go.
    cfg = TrainConfig(loss="wgan-gp", steps=100, width=8, z_dim=16, batch=16, n_critic=1)
    storage = tmp_path / "ckpts"
    settings = RunSettings(log_every=1, sample_every=1000, checkpoint_every=10, storage_path=str(storage), max_failures=1)
    training = InBackground(train, cfg, tiny_dataset, run=settings, experiment="t", progress=False)
    client = MlflowClient()
    deadline = time.time() + 240
    runs: list = []

    def registered() -> list[int]:
        """Checkpoint steps Ray Train has registered: the ones a restart can resume from."""
        snapshots = list(storage.glob("*/checkpoint_manager_snapshot.json"))
        if not snapshots:
            return []
        try:
            state = json.loads(snapshots[0].read_text())
        except ValueError:  # being rewritten
            return []
        return [int(c["checkpoint_dir_name"].split("_")[-1]) for c in state["checkpoint_results"]]

    while time.time() < deadline and max(registered(), default=0) < 20:
        time.sleep(0.2)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    last_registered = max(registered(), default=0)
    assert last_registered >= 20, "checkpoint 20 was never registered"
    pids = train_worker_pids()
    assert pids, "no Ray Train worker process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    killed_at = max(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss/generator"))
    result = training.result(timeout=300)
    assert result.steps == 100 and result.run_id == runs[0].info.run_id

    resumed = [int(m.value) for m in client.get_metric_history(result.run_id, "train/resumed_from_step")]
    assert len(resumed) == 1 and resumed[0] >= last_registered  # from the newest registered checkpoint
    # A worker's report waits for the controller to collect the one before it, so at the kill
    # at most one written checkpoint is not yet registered (seen: killed at 32 with 30 written,
    # 20 registered): at most two intervals are replayed.
    assert killed_at - resumed[0] <= 2 * settings.checkpoint_every + 1
    assert client.get_run(result.run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(result.run_id, "loss/generator")]
    assert sorted(set(steps)) == list(range(1, 101))  # every step logged; replayed ones twice


def test_a_diverging_run_fails_in_mlflow_and_keeps_its_last_good_checkpoint(tiny_dataset, ray_session, mlflow_store, tmp_path):
    # lr 300 with Adam grows the critic's weights by about 300 a step: its scores overflow
    # after some tens of steps (seen: steps 11-25 over three data orders), after several checkpoints.
    cfg = TrainConfig(loss="wgan-gp", steps=200, lr=300.0, width=8, z_dim=16, batch=16)
    storage = tmp_path / "ckpts"
    settings = RunSettings(log_every=1, sample_every=1000, checkpoint_every=2, storage_path=str(storage))
    with pytest.raises(TrainingFailed, match="diverged"):
        train(cfg, tiny_dataset, run=settings, experiment="t", progress=False)
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "FAILED"
    assert "non-finite" in run.data.tags["wganctl.failure_reason"]
    kept = sorted(storage.glob("*/checkpoint_0*"))
    assert kept, "no checkpoint before the divergence"
    payload = ckpt.load(kept[-1])
    assert 1 <= payload["step"] < 200
    for name in ("generator", "critic"):
        assert all(torch.isfinite(v).all() for v in payload[name].values() if v.is_floating_point()), name


def test_a_killed_train_driver_gives_its_cpus_back(tiny_dataset, ray_session, mlflow_store, tmp_path):
    """What a sweep does to a trial that Tune ends (`pipelines.cluster.holds`): the run's driver
    actor, its controller and its placement group, recorded in the sweep's ledger, are released
    at once, by handle, with no wait on Ray's state API (Ray Train's own cleaner waits on it, and
    under load never freed them: issue 34)."""
    import ray

    from pipelines.cluster import holds
    from pipelines.train import TrialPlumbing
    from pipelines.tune.trial import TrainDriver

    cfg = TrainConfig(loss="wgan-gp", steps=100_000, width=8, z_dim=16, batch=16, n_critic=1)
    settings = RunSettings(log_every=1, sample_every=100_000, checkpoint_every=100_000,
                           storage_path=str(tmp_path / "ckpts"))
    ledger = holds.ledger("test-ledger")
    client = MlflowClient()
    client.search_experiments()  # the store exists before the driver's process opens it too: two
    # processes creating one sqlite store at once race on its tables (seen: "table skills already exists")
    driver = TrainDriver.remote()
    assert ray.get(ledger.hold.remote("trial-1", driver)) == []
    plumbing = TrialPlumbing(tags={"wganctl.trial_id": "trial-1"}, ledger="test-ledger")
    driver.run.remote(dict(cfg=cfg, data_dir=tiny_dataset, run=settings, experiment="t", progress=False,
                           trial=plumbing), mlflow_store)
    deadline = time.time() + 120
    while time.time() < deadline:
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        if runs and client.get_metric_history(runs[0].info.run_id, "loss/generator"):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the train never logged a step")
    total = ray.cluster_resources()["CPU"]
    assert ray.available_resources().get("CPU", 0) < total  # its workers hold CPUs
    removed = holds.release(ray.get(ledger.take.remote("trial-1")))
    assert len(removed) == 1  # the run's group was still reserved, and is removed now
    deadline = time.time() + 10
    while ray.available_resources().get("CPU", 0) < total and time.time() < deadline:
        time.sleep(0.25)
    ray.kill(ledger)
    assert ray.available_resources().get("CPU", 0) == total, "the released run's workers still hold CPUs"


def test_a_worker_error_fails_the_run_with_its_logging_sent_and_its_checkpoints_kept(
        tiny_dataset, ray_session, mlflow_store, tmp_path, monkeypatch):
    """A worker that raises (the test hook WGANCTL_TEST_FAIL_AT_STEP: step 11, after the log at
    10 and the checkpoint at 8): the run ends FAILED with that error, every step logged before
    it is in MLflow, nothing from the failed step on, and checkpoint 8 is still there."""
    from pipelines.tracking.resilient_logging import LOST_TAG

    monkeypatch.setenv("WGANCTL_TEST_FAIL_AT_STEP", "11")
    cfg = TrainConfig(loss="wgan-gp", steps=20, width=8, z_dim=16, batch=16, n_critic=1)
    storage = tmp_path / "ckpts"
    settings = RunSettings(log_every=2, sample_every=2, checkpoint_every=4, storage_path=str(storage), max_failures=0)
    with pytest.raises(TrainingFailed):
        train(cfg, tiny_dataset, run=settings, experiment="t", progress=False)
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "FAILED"
    for key in ("loss/critic", "loss/generator", "wasserstein_estimate", "gradient_penalty"):
        assert metric_steps(client, run.info.run_id, key) == list(range(1, 11)), key
    assert metric_steps(client, run.info.run_id, "throughput/images_per_s") == [2, 4, 6, 8, 10]
    grids = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert grids == {f"samples/step_{s:06d}.png" for s in (2, 4, 6, 8, 10)}
    assert LOST_TAG not in run.data.tags  # a reachable server took everything
    kept = sorted(path.name for path in storage.glob("*/checkpoint_0*"))
    assert kept == ["checkpoint_0000004", "checkpoint_0000008"]
    assert ckpt.load(next(storage.glob("*/checkpoint_0000008")))["step"] == 8
    assert "injected fault at step 11" in run.data.tags["wganctl.failure_reason"]


class _SlowTrackingServer(MlflowClient):
    """The test's sqlite store behind a link that takes ``delay_s`` a request: a remote server's latency."""

    def __init__(self, uri: str, delay_s: float):
        super().__init__(uri)
        self.delay_s = delay_s

    def log_batch(self, *args, **kwargs):
        time.sleep(self.delay_s)
        return super().log_batch(*args, **kwargs)

    def log_image(self, *args, **kwargs):
        time.sleep(self.delay_s)
        return super().log_image(*args, **kwargs)


def _log_steps(buffered, run_id: str, steps: range) -> None:
    """What rank 0 queues at each logging step: its metrics and a grid (a request each)."""
    from pipelines import tracking

    picture = np.zeros((30, 30, 1), dtype=np.uint8)
    for step in steps:
        buffered.log_batch(run_id, metrics=tracking.metrics_batch([(step, {"loss/critic": float(step)})], 0))
        tracking.log_grid(buffered, run_id, picture, step)


def test_a_raising_worker_loop_sends_its_queued_logging_before_the_error_goes_on(mlflow_store):
    """The guard around the worker loop: with a server that takes 0.2 s a request, what was
    queued when the loop raised is in MLflow by the time the error leaves it, unchanged."""
    from pipelines.tracking.resilient_logging import LOST_TAG, BufferedMlflowClient
    from pipelines.train_worker import flushed_on_error

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    buffered = BufferedMlflowClient(_SlowTrackingServer(mlflow_store, delay_s=0.2))
    fault = RuntimeError("injected fault at step 6")
    with pytest.raises(RuntimeError) as raised:
        with flushed_on_error(buffered, timeout=30):
            _log_steps(buffered, run_id, range(1, 6))
            raise fault
    assert raised.value is fault
    assert metric_steps(client, run_id, "loss/critic") == [1, 2, 3, 4, 5]
    assert len(client.list_artifacts(run_id, "samples")) == 5
    assert LOST_TAG not in client.get_run(run_id).data.tags


def test_a_raising_worker_loop_waits_for_mlflow_only_so_long_and_tags_what_it_gave_up(mlflow_store):
    """With a server too slow to take the queue within the bound (1 s a request, 1.5 s allowed),
    the error goes on after the bound (plus the lost tag's grace) and the run names what it lacks."""
    import re

    from pipelines.tracking.resilient_logging import LOST_TAG, OUTCOME_GRACE_S, BufferedMlflowClient, TrackingOutageWarning
    from pipelines.train_worker import flushed_on_error

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    buffered = BufferedMlflowClient(_SlowTrackingServer(mlflow_store, delay_s=1.0))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="injected"), pytest.warns(TrackingOutageWarning, match="were not sent"):
        with flushed_on_error(buffered, timeout=1.5):
            _log_steps(buffered, run_id, range(1, 6))
            raise RuntimeError("injected fault at step 6")
    assert time.monotonic() - started < 1.5 + OUTCOME_GRACE_S + 1
    lost = client.get_run(run_id).data.tags[LOST_TAG]
    assert "not sent: still queued when closing gave up after 1.5 s" in lost, lost
    named = re.search(r"metrics of (\d+) steps \(([\d, -]+)\)", lost)
    given_up = set()
    for part in named.group(2).split(", "):
        low, _, high = part.partition("-")
        given_up.update(range(int(low), int(high or low) + 1))
    sent = set(metric_steps(client, run_id, "loss/critic"))
    assert given_up and sent | given_up == {1, 2, 3, 4, 5} and not sent & given_up
