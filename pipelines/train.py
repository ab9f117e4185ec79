"""The train stage: a WGAN / WGAN-GP / GAN run on Ray Train, tracked as one MLflow run.

`train()` checks everything it can before Ray starts (config, data manifest,
resume id), opens the MLflow run, runs `TorchTrainer` with
`pipelines.train_worker.train_loop_per_worker`, then logs the generator model
and the loss curves from the driver, off the training hot path.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import mlflow
from mlflow.tracking import MlflowClient

from wgan.config import TrainConfig
from wgan.data import fs as datafs
from wgan.data.manifest import load_manifest, manifest_sha256, shard_paths
from wgan.errors import UserError
from pipelines import checkpoints, tracking
from pipelines.ray_cluster import init_ray, through_ray_client, worker_resources

DEFAULT_STORAGE = "ray_results"
# A dataset whose images take at most this share of the object store is read once and
# held there for the whole run: re-reading it every epoch costs about 2 s of Ray Data
# start-up (parquet footer readers, read tasks) on this 2-core machine, which dominates
# small runs (measured: 1.7-2.0 s an epoch streamed, 0.05-0.15 s materialized, 512 images).
MATERIALIZE_MAX_SHARE = 0.1


class TrainingFailed(RuntimeError):
    """The run failed or diverged; the MLflow run is marked FAILED with the reason."""


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    steps: int
    checkpoint_dir: str
    final_grid: str
    tracking_uri: str


def _config_for_data(cfg: TrainConfig, manifest: dict) -> TrainConfig:
    size, channels = manifest["size"], manifest["channels"]
    for name, given, found in (("image size", cfg.image_size, size), ("channel count", cfg.channels, channels)):
        if given is not None and given != found:
            raise UserError(f"the model's {name} {given} does not match the data's {found}: "
                            f"drop the option or prepare the data again with that {name}")
    classes = len(manifest.get("class_names") or [])
    if cfg.conditional and classes < 2:
        raise UserError(f"--conditional needs a labelled dataset with at least 2 classes; this one has {classes}: "
                        f"prepare a labelled dataset (an image folder with one subfolder per class) or drop --conditional")
    return dataclasses.replace(cfg, image_size=size, channels=channels, num_classes=classes if cfg.conditional else 0)


def _resumed_config(client: MlflowClient, run_id: str, steps: int | None) -> tuple[TrainConfig, str, str]:
    run = tracking.get_run(client, run_id)
    if run.data.tags.get("wganctl.stage") != "train":
        raise UserError(f"MLflow run {run_id} is not a wganctl training run: give the id of one")
    cfg = TrainConfig.from_dict(json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.json")))
    done = int(run.data.tags.get("wganctl.completed_steps", "0"))
    if steps is not None:
        cfg = dataclasses.replace(cfg, steps=steps)
    if done and cfg.steps <= done:
        raise UserError(f"run {run_id} already finished {done} steps: pass --steps larger than {done} to continue it")
    return cfg, run.data.params["data_dir"], run.data.tags["ray.storage_path"]


@through_ray_client
def train(cfg: TrainConfig | None = None, data_dir: str | None = None, *, experiment: str = "wganctl",
          resume: str | None = None, storage_path: str | None = None, address: str | None = None,
          max_failures: int = 2, progress: bool = True, steps: int | None = None,
          verbose: bool = False, parent_run_id: str | None = None, tags: dict[str, str] | None = None,
          callbacks: list | None = None, objective: dict | None = None,
          cpus_per_worker: float | None = None, init_checkpoint: str | None = None) -> TrainResult:
    """Train a GAN on a prepared dataset (or continue run ``resume``); returns where everything landed.

    The tune stage passes ``parent_run_id`` (the sweep's MLflow run), ``tags`` (its trial id),
    ``callbacks`` (Tune's report callback), ``objective`` (sample-quality settings computed at
    every checkpoint, see `pipelines.objective`), ``cpus_per_worker`` (trials share the CPUs) and,
    for PBT, ``init_checkpoint``: a new run starts from another run's checkpoint (weights,
    optimizer states with this config's learning rate, step).
    """
    if resume:
        client = MlflowClient(tracking.tracking_uri())
        cfg, logged_data_dir, storage_path = _resumed_config(client, resume, steps)
        data_dir = data_dir or logged_data_dir
    elif cfg is None:
        cfg = TrainConfig()
    if steps is not None and not resume:
        cfg = dataclasses.replace(cfg, steps=steps)
    if not data_dir:
        raise UserError("no training data: pass --data DIR (a directory written by `wganctl prepare`)")
    manifest = load_manifest(data_dir, verify=True)
    cfg = _config_for_data(cfg, manifest).resolved()
    storage_path = datafs.absolute(storage_path or DEFAULT_STORAGE)
    client = MlflowClient(tracking.tracking_uri())  # only now: bad input must not create a store

    if resume:
        run_id = resume
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = tracking.start_train_run(client, experiment, cfg, data_dir=data_dir, manifest=manifest,
                                          manifest_sha256=manifest_sha256(data_dir), storage_path=storage_path,
                                          parent_run_id=parent_run_id, tags=tags)
    try:
        result = _fit(cfg, run_id, data_dir, manifest, storage_path, address, max_failures, progress, verbose,
                      callbacks or [], objective, cpus_per_worker, init_checkpoint)
    except KeyboardInterrupt:
        client.set_terminated(run_id, status="KILLED")
        raise
    except Exception as err:
        failures = getattr(err, "worker_failures", None)  # Ray Train's WorkerGroupError: the worker's own error
        cause = failures[min(failures)] if failures else err
        reason = f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
        client.set_tag(run_id, "wganctl.failure_reason", reason)
        client.set_terminated(run_id, status="FAILED")
        raise TrainingFailed(f"training run {run_id} failed: {reason}") from err

    diverged = client.get_run(run_id).data.tags.get(tracking.DIVERGED_TAG)
    if diverged or result.checkpoint is None:
        reason = f"diverged: {diverged}" if diverged else "no checkpoint was written"
        client.set_tag(run_id, "wganctl.failure_reason", reason)
        client.set_terminated(run_id, status="FAILED")
        raise TrainingFailed(f"training run {run_id} failed ({reason}); the last good checkpoint, if any, "
                             f"is kept in {storage_path}/{tracking.ray_run_name(run_id)}")
    saved_at = checkpoints.location(result.checkpoint)
    payload = checkpoints.load(saved_at)
    model_uri = tracking.log_generator_model(run_id, payload)
    tracking.log_loss_curves(client, run_id)
    client.set_tag(run_id, "wganctl.completed_steps", str(payload["step"]))
    client.set_terminated(run_id, status="FINISHED")
    run = client.get_run(run_id)
    return TrainResult(run_id=run_id, model_uri=model_uri, steps=payload["step"],
                       checkpoint_dir=saved_at,
                       final_grid=f"{run.info.artifact_uri}/samples/step_{payload['step']:06d}.png",
                       tracking_uri=tracking.tracking_uri())


def training_dataset(data_dir: str, manifest: dict):
    """The prepared shards as a Ray Dataset: held in the object store when small, else streamed.

    Small (at most MATERIALIZE_MAX_SHARE of the object store, counting raw pixels) is
    materialized before training starts; a large dataset (STL-10's 100k images at 96 px)
    streams from its shards every epoch, so memory stays bounded.
    """
    import ray
    import ray.data

    dataset = ray.data.read_parquet(shard_paths(data_dir, manifest), columns=["image", "label"])
    raw_bytes = manifest["count"] * manifest["size"] ** 2 * manifest["channels"]
    if raw_bytes <= MATERIALIZE_MAX_SHARE * ray.cluster_resources().get("object_store_memory", 0):
        dataset = dataset.materialize()
    return dataset


def _fit(cfg: TrainConfig, run_id: str, data_dir: str, manifest: dict, storage_path: str,
         address: str | None, max_failures: int, progress: bool, verbose: bool, callbacks: list,
         objective: dict | None, cpus_per_worker: float | None, init_checkpoint: str | None = None):
    import ray.data
    import ray.train
    from ray.data.dataset import MaterializedDataset
    from ray.train.torch import TorchTrainer

    from pipelines.progress import ProgressReporter
    from pipelines.train_worker import train_loop_per_worker

    local = init_ray(address, verbose)
    resources, torch_threads = worker_resources(cfg.workers, cfg.gpu, local, cpus_per_worker)
    ray.data.DataContext.get_current().enable_progress_bars = verbose
    dataset = training_dataset(data_dir, manifest)
    reporter = ProgressReporter(cfg.steps, enabled=progress)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train_config": cfg.to_dict(),
            "mlflow_run_id": run_id,
            "tracking_uri": tracking.tracking_uri(),
            "torch_threads": torch_threads,
            "progress_queue": reporter.queue,
            "objective": objective,
            "init_checkpoint": init_checkpoint,
            "in_memory": isinstance(dataset, MaterializedDataset),  # small: each worker holds its shard
            # Test hook (see pipelines.train_worker): passed on, as Ray's workers do not see
            # variables set after Ray started.
            "fail_at_step": int(os.environ.get("WGANCTL_TEST_FAIL_AT_STEP") or 0) or None,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=tracking.ray_run_name(run_id),
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
            callbacks=callbacks,
        ),
        datasets={"train": dataset},
    )
    with reporter:
        return trainer.fit()
