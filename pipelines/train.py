"""The train stage: a WGAN / WGAN-GP / GAN run on Ray Train, tracked as one MLflow run.

`train()` checks everything it can before Ray starts (config, data manifest,
resume id), opens the MLflow run, runs `TorchTrainer` with
`pipelines.train_hop.train_loop_per_worker`, then logs the generator model
and the loss curves from the driver, off the training hot path.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import mlflow
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from wgan.config import RunSettings, TrainConfig
from wgan.data import fs as datafs
from wgan.data.manifest import load_manifest, manifest_sha256, shard_paths
from wgan.errors import OutOfSpace, UserError, no_space
from wgan.knobs import knobs
from pipelines import objective, tracking
from pipelines.cluster import checkpoints, console, holds
from pipelines.tracking import run_tags, system_metrics
from pipelines.cluster.connect import check_placeable, init_ray, through_ray_client, worker_resources

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
    final_fd: float | None = None  # --eval-every: eval/fd at the last step
    best_fd: float | None = None  # and at the checkpoint Ray Train ranks best (its step: best_step)
    best_step: int | None = None


@dataclass
class TrialPlumbing:
    """What the tune stage hands a trial's train run, and no other caller does.

    ``parent_run_id`` (the sweep's MLflow run) and ``tags`` (its trial id) place the run;
    ``callbacks`` (Ray Train callbacks: the trial's report forwarder) and ``objective``
    (sample-quality settings computed at every checkpoint, see `pipelines.objective`) feed
    Tune; ``cpus_per_worker`` is the trial's share of the CPUs; ``init_checkpoint`` (PBT)
    starts a new run from another run's checkpoint: weights, optimizer states with this
    config's learning rate, step. ``ledger`` names the sweep's `pipelines.cluster.holds.GroupLedger`,
    where the run records what it holds, under its trial id, so that the sweep can release it.
    """

    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    callbacks: list = field(default_factory=list)
    objective: dict | None = None
    cpus_per_worker: float | None = None
    init_checkpoint: str | None = None
    ledger: str | None = None

    def placement_tags(self) -> dict[str, str]:
        """The tags that place the trial's run: its trial id, and its sweep's run as its parent."""
        return {**self.tags, **({run_tags.PARENT_RUN: self.parent_run_id} if self.parent_run_id else {})}


@dataclass(frozen=True)
class Resume:
    """Continue MLflow run ``run_id`` from its last checkpoint; ``steps``: train it longer, to this many."""

    run_id: str
    steps: int | None = None


@dataclass
class _Resumed:
    """A run as MLflow holds it, about to be continued."""

    cfg: TrainConfig
    data_dir: str
    settings: RunSettings  # as it last ran
    done: int  # steps in its last checkpoint
    status: str  # its MLflow status before this resume

    def continued(self, run_id: str, cfg: TrainConfig | None, data_dir: str | None, run: RunSettings | None,
                  steps: int | None) -> tuple[TrainConfig, str, RunSettings]:
        """The config (only longer), data and settings to go on with; refuses what would change the run."""
        if cfg is not None:
            _refuse_model_changes(run_id, self.cfg, cfg)
            steps = steps or cfg.steps
        if self.done and (steps or self.cfg.steps) <= self.done:
            raise UserError(f"run {run_id} already finished {self.done} steps: pass --steps larger than "
                            f"{self.done} to continue it")
        cfg = dataclasses.replace(self.cfg, steps=steps) if steps else self.cfg
        return cfg, data_dir or self.data_dir, run or self.settings

    def check_storage(self, run_id: str, storage_path: str) -> None:
        if storage_path != self.settings.storage_path and not checkpoints.run_checkpoints(storage_path, run_id):
            raise UserError(f"{storage_path} holds no checkpoint of run {run_id} (they are in "
                            f"{self.settings.storage_path}): copy them there first, or drop --storage-path")

    def record(self, client: MlflowClient, run_id: str, settings: RunSettings) -> None:
        """Append changed settings to the run's resumed_with tag, rewrite run_settings.json, reopen it."""
        before, after = self.settings.to_dict(), settings.to_dict()
        changes = {k: v for k, v in after.items() if before[k] != v}
        if changes:
            tracking.record_resume(client, run_id, self.done, changes)
        tracking.log_run_settings(client, run_id, settings)
        client.update_run(run_id, status="RUNNING")

    def failed_before_a_new_checkpoint(self, client: MlflowClient, run_id: str, storage_path: str,
                                       went_on_from: str | None, reason: str) -> bool:
        """A resume of a FINISHED run that ends before it saved a checkpoint leaves the run as its
        training ended: FINISHED, its model and completed steps untouched, the failure in the tag
        ``wganctl.failed_resume`` (docs/architecture.md, section 3). True when that is so."""
        if self.status != "FINISHED" or checkpoints.newest_loadable(storage_path, run_id)[0] != went_on_from:
            return False
        client.set_tag(run_id, run_tags.FAILED_RESUME, reason[:MAX_TAG_VAL_LENGTH])
        client.set_terminated(run_id, status="FINISHED")
        return True


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


def logged_run_settings(run_id: str) -> RunSettings:
    """The run settings a training run last ran with (run_settings.json; for runs logged
    before it existed, the settings its config.json held)."""
    return _resumed_run(tracking.client(needs=f"MLflow run {run_id!r}"), run_id).settings


def _resumed_run(client: MlflowClient, run_id: str) -> _Resumed:
    run = tracking.get_run(client, run_id)
    if run.data.tags.get(run_tags.STAGE) != "train":
        raise UserError(f"MLflow run {run_id} is not a wganctl training run: give the id of one")
    logged = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{tracking.CONFIG_FILE}"))
    try:
        settings = RunSettings.from_dict(json.loads(mlflow.artifacts.load_text(
            f"{run.info.artifact_uri}/{tracking.RUN_SETTINGS_FILE}")))
    except mlflow.exceptions.MlflowException:  # a run logged before run_settings.json
        settings = RunSettings.from_legacy(logged, storage_path=run.data.tags[run_tags.STORAGE_PATH])
    return _Resumed(TrainConfig.from_dict(logged), run.data.params["data_dir"], settings,
                    done=int(run.data.tags.get(run_tags.COMPLETED_STEPS, "0")), status=run.info.status)


def _refuse_model_changes(run_id: str, logged: TrainConfig, given: TrainConfig) -> None:
    """A resumed run keeps what defines it (its params cannot change): name what would. A field
    left None (the paper's value for the loss) is not a change."""
    changed = [k.option for k in knobs(TrainConfig) if k.cli and not k.on_resume
               and getattr(given, k.name) is not None and getattr(given, k.name) != getattr(logged, k.name)]
    if changed:
        raise UserError(f"{', '.join(changed)} would change the model or objective of run {run_id}, which --resume "
                        f"continues as it was: drop {'it' if len(changed) == 1 else 'them'}, or start a new run")


@through_ray_client
def train(cfg: TrainConfig | None = None, data_dir: str | None = None, *, run: RunSettings | None = None,
          experiment: str = "wganctl", resume: str | Resume | None = None, address: str | None = None,
          progress: bool = True, trial: TrialPlumbing | None = None) -> TrainResult:
    """Train a GAN on a prepared dataset (or continue run ``resume``); returns where everything landed.

    ``cfg`` defines the run, ``run`` says how it runs (`wgan.config`). Resuming (a run id, or a
    `Resume` that also lengthens the run), ``cfg`` may only lengthen the run, and ``run`` replaces
    the settings the run last ran with (`logged_run_settings`; None keeps them): a run goes on
    with other workers, devices, precision or intervals, recorded in its ``wganctl.resumed_with``
    tag. ``address`` and ``progress`` concern this call only (Ray's own logs show after
    `pipelines.cluster.console.verbose`). ``trial``: the tune stage's plumbing (`TrialPlumbing`).
    """
    trial = trial or TrialPlumbing()
    resume = Resume(resume) if isinstance(resume, str) else resume
    # --- Check: everything knowable before Ray or an MLflow run starts ------------------------
    resumed = _resumed_run(tracking.client(needs=f"MLflow run {resume.run_id!r}"), resume.run_id) if resume else None
    if resumed:
        cfg, data_dir, run = resumed.continued(resume.run_id, cfg, data_dir, run, resume.steps)
        resume = resume.run_id
    run = dataclasses.replace(run or RunSettings()).validate()
    if not data_dir:
        raise UserError("no training data: pass --data DIR (a directory written by `wganctl prepare`)")
    manifest = load_manifest(data_dir, verify=True)
    cfg = _config_for_data(cfg or TrainConfig(), manifest).resolved()
    run.check_fits(cfg, images=manifest["count"])
    run.storage_path = datafs.absolute(run.storage_path or DEFAULT_STORAGE)
    checkpoints.check_storage(run.storage_path)
    fallback = went_on_from = None
    if resumed:
        resumed.check_storage(resume, run.storage_path)
        fallback = _readable_checkpoint(resume, run.storage_path)
        went_on_from = fallback.where if fallback else (checkpoints.run_checkpoints(run.storage_path, resume) or [None])[-1]
    else:
        tracking.check_experiment_name(experiment)
    tracking.check_reachable()
    classifier_run = _evaluation_classifier(run, manifest) if run.eval_every else None

    # --- Connect to Ray: refuse a shape the cluster can never place (--gpu without GPUs) ---------
    local = init_ray(address, not console.quiet_now())
    resources, torch_threads = worker_resources(run.workers, run.gpu, local, trial.cpus_per_worker)
    if trial.cpus_per_worker is None:  # a sweep's trial runs in a Ray task: tune_sweep checked its shape
        check_placeable(resources, run.workers, local=local)
    client = tracking.client()  # only now: bad input must not create a store
    evaluation = _evaluation_spec(client, classifier_run, data_dir, manifest, run) if classifier_run else None

    # --- Open the MLflow run: a new one, or the resumed one with its new settings recorded ------
    if resumed:
        run_id = resume
        resumed.record(client, run_id, run)
        if fallback:
            fallback.set_aside(client, run_id, run.storage_path)
    else:
        run_id = tracking.start_train_run(client, experiment, cfg, run, data_dir=data_dir, manifest=manifest,
                                          manifest_sha256=manifest_sha256(data_dir), tags=trial.placement_tags())
    # --- Fit on Ray Train, then log the model from the driver, off the hot path -----------------
    try:
        worker = _worker_config(cfg, run, run_id, trial, torch_threads, fallback, evaluation)
        result = _fit(worker, run, trial, training_dataset(data_dir, manifest), resources, progress)
    except KeyboardInterrupt:
        if not (resumed and resumed.failed_before_a_new_checkpoint(client, run_id, run.storage_path, went_on_from,
                                                                   "interrupted (Ctrl-C)")):
            client.set_terminated(run_id, status="KILLED")
        raise
    except Exception as err:
        reason, full = _failure_reason(err, run, run_id, resources)
        if resumed and resumed.failed_before_a_new_checkpoint(client, run_id, run.storage_path, went_on_from, reason):
            reason += f"; run {run_id} is left as its training ended (FINISHED, tag {run_tags.FAILED_RESUME})"
        else:
            _fail(client, run_id, reason)
        if full is not None:
            raise OutOfSpace(f"training run {run_id} failed: {reason}: free space, then "
                             f"`wganctl train --resume {run_id}` goes on from it") from err
        raise TrainingFailed(f"training run {run_id} failed: {reason}") from err
    return _finish(client, run_id, result, run, cfg, manifest)


def _failure_reason(err: Exception, run: RunSettings, run_id: str, resources: dict) -> tuple[str, OSError | None]:
    """Why a run failed, in one line (the worker's own error, workers never placed, a full disk), and the
    full disk's error where that was it."""
    failures = getattr(err, "worker_failures", None)  # Ray Train's WorkerGroupError: the worker's own error
    cause = failures[min(failures)] if failures else err
    reason = f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    if _never_placed(err):
        reason = (f"its workers could not be placed within {run.wait_for_workers:g} s (--wait-for-workers): "
                  f"{holds.describe_wait(run.workers, resources)}: free them (`ray status`) or lower --workers")
    full = no_space(err)
    if full is not None:
        reason = (f"no space left on device ({str(full).splitlines()[0][:200]}); its last good checkpoint is "
                  f"kept in {run.storage_path}/{tracking.ray_run_name(run_id)}")
    return reason, full


def fd_lines(result: TrainResult) -> list[str]:
    """The console's quality line of a run with --eval-every (none without)."""
    if result.best_fd is None:
        return []
    final = "-" if result.final_fd is None else f"{result.final_fd:.3f}"
    return [f"Frechet distance: {final} at the end, best {result.best_fd:.3f} at step {result.best_step} "
            f"(in the project classifier's features; `--checkpoint best` samples or evaluates that checkpoint)"]


def _evaluation_classifier(run: RunSettings, manifest: dict) -> str:
    """--eval-every's classifier run (``--classifier``, else the newest matching one), refused in one
    line before Ray starts when the data has no labels or no classifier exists."""
    if not manifest.get("class_names"):
        raise UserError("--eval-every measures in the project classifier's features, which need a labelled "
                        "dataset: drop --eval-every, or prepare a labelled one")
    if run.classifier:
        return run.classifier
    try:
        from pipelines.classifier import find_classifier

        # a client only where the store exists: bad input must not create one
        return find_classifier(tracking.client() if tracking.store_exists() else None, manifest)
    except UserError as err:
        raise UserError(f"--eval-every needs the project classifier: {err}") from None


def _evaluation_spec(client: MlflowClient, classifier_run: str, data_dir: str, manifest: dict,
                     run: RunSettings) -> dict:
    """What rank 0 needs to score samples (`pipelines.objective`): the classifier and the data's
    reference statistics, cached per (dataset, classifier) as evaluate caches them."""
    from pipelines.classifier import matching_classifier
    from pipelines.cluster.reference import reference_statistics

    classifier = matching_classifier(client, classifier_run, manifest, "--eval-every would measure this run")
    mu, sigma = reference_statistics(data_dir, classifier, classifier_run)
    return objective.objective_spec(classifier, mu, sigma, run.eval_samples)


@dataclass
class _Fallback:
    """A resumed run's newest checkpoints that do not load (``skipped``: name, why) and the newest one
    that does (``where``), which the run goes on from instead."""

    where: str
    skipped: list[tuple[str, str]]

    def set_aside(self, client: MlflowClient, run_id: str, storage_path: str) -> None:
        """Copy the unreadable ones aside (never deleted), say so in one line and in the run's tag."""
        notes = [f"{name} ({why}; kept as {checkpoints.set_aside(storage_path, run_id, name)})"
                 for name, why in self.skipped]
        step = int(datafs.name(self.where).removeprefix(checkpoints.DIR_PREFIX))
        print(f"train: skipped checkpoint(s) of run {run_id} that cannot be read: {'; '.join(notes)}; "
              f"resuming from step {step}", flush=True)
        before = client.get_run(run_id).data.tags.get(run_tags.SKIPPED_CHECKPOINTS)
        client.set_tag(run_id, run_tags.SKIPPED_CHECKPOINTS,
                       "; ".join(filter(None, [before, *notes]))[:MAX_TAG_VAL_LENGTH])


def _readable_checkpoint(run_id: str, storage_path: str) -> _Fallback | None:
    """None when the run's newest checkpoint loads (or it has none); a `_Fallback` when an older one
    must stand in; refused in one line when no checkpoint of the run loads."""
    where, skipped = checkpoints.newest_loadable(storage_path, run_id)
    if not skipped:
        return None
    if where is None:
        raise UserError(f"no checkpoint of run {run_id} in {storage_path} can be read (newest: {skipped[0][1]}): "
                        f"restore them from a copy, or start a new run")
    return _Fallback(where, skipped)


def _never_placed(err: BaseException) -> bool:
    """True for Ray Train's error after its last try to place the worker group (`holds.start_retries`)."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return isinstance(getattr(err, "controller_failure", None), WorkerGroupStartupTimeoutError)


def _fail(client: MlflowClient, run_id: str, reason: str) -> None:
    client.set_tag(run_id, run_tags.FAILURE_REASON, reason)
    client.set_terminated(run_id, status="FAILED")


def checkpoint_config(run: RunSettings):
    """Ray Train's checkpoint policy: with --eval-every it ranks the checkpoints by eval/fd (lowest
    best; those between evaluations rank last, `objective.RANK_SCORE`) and keeps the best
    --keep-checkpoints and the newest (Ray always keeps the newest); without, the newest
    --keep-checkpoints (0: all)."""
    import ray.train

    return ray.train.CheckpointConfig(num_to_keep=run.keep_checkpoints or None,
                                      checkpoint_score_attribute=objective.RANK_SCORE if run.eval_every else None,
                                      checkpoint_score_order="min")


def best_checkpoint(result) -> tuple[int | None, float | None, float | None]:
    """(best step, its eval/fd, the final eval/fd) of a run with --eval-every, from Ray Train's own
    ranking: its checkpoints sorted by the score attribute, best last, those without an evaluation first."""
    scored = [(ckpt, metrics) for ckpt, metrics in (result.best_checkpoints or []) if objective.EVAL_FD in metrics]
    final = (result.metrics or {}).get(objective.EVAL_FD)
    if not scored:
        return None, None, final
    _, metrics = scored[-1]
    return int(metrics["step"]), float(metrics[objective.EVAL_FD]), final


def _description(cfg: TrainConfig, manifest: dict, steps: int, fds: tuple) -> str:
    """The run's one-sentence description (the MLflow UI's Description): what, on what, how good."""
    loss = {"wgan-gp": "WGAN-GP", "wgan": "WGAN", "hinge": "a hinge-loss GAN", "gan": "a standard GAN"}[cfg.loss]
    lazy = f" (penalty every {cfg.gp_every} critic updates)" if cfg.loss == "wgan-gp" and cfg.gp_every > 1 else ""
    text = (f"{loss}{lazy} with a {cfg.arch} of width {cfg.width}, trained {steps} steps on "
            f"{manifest.get('dataset')} at {manifest['size']} px")
    best_step, best_fd, final_fd = fds
    if best_fd is not None:
        text += (f"; Frechet distance in the project classifier's features {final_fd:.3f} at the end, "
                 f"best {best_fd:.3f} at step {best_step}")
    return text + "."


def _finish(client: MlflowClient, run_id: str, result, run: RunSettings, cfg: TrainConfig,
            manifest: dict) -> TrainResult:
    """Fail a run that diverged or saved nothing; else log its generator and curves and close it."""
    diverged = client.get_run(run_id).data.tags.get(run_tags.DIVERGED)
    if diverged or result.checkpoint is None:
        reason = f"diverged: {diverged}" if diverged else "no checkpoint was written"
        _fail(client, run_id, reason)
        raise TrainingFailed(f"training run {run_id} failed ({reason}); the last good checkpoint, if any, "
                             f"is kept in {run.storage_path}/{tracking.ray_run_name(run_id)}")
    saved_at = checkpoints.location(result.checkpoint)
    payload = checkpoints.load(saved_at)
    model_uri = tracking.log_generator_model(run_id, payload)
    tracking.log_loss_curves(client, run_id)
    client.set_tag(run_id, run_tags.COMPLETED_STEPS, str(payload["step"]))
    fds = best_checkpoint(result) if run.eval_every else (None, None, None)
    if fds[0] is not None:
        client.set_tag(run_id, run_tags.BEST_STEP, str(fds[0]))
        client.set_tag(run_id, run_tags.BEST_FD, f"{fds[1]:.6g}")
    client.set_tag(run_id, run_tags.DESCRIPTION, _description(cfg, manifest, payload["step"], fds))
    client.set_terminated(run_id, status="FINISHED")
    artifacts = client.get_run(run_id).info.artifact_uri
    return TrainResult(run_id=run_id, model_uri=model_uri, steps=payload["step"], checkpoint_dir=saved_at,
                       final_grid=f"{artifacts}/samples/step_{payload['step']:06d}.png",
                       tracking_uri=tracking.tracking_uri(), best_step=fds[0], best_fd=fds[1], final_fd=fds[2])


def training_dataset(data_dir: str, manifest: dict):
    """The prepared shards, as the workers will read them: a ``pyarrow.Table`` when small, else a
    Ray Dataset that streams.

    Small (at most MATERIALIZE_MAX_SHARE of the object store, counting raw pixels) is read here
    by pyarrow, put in the object store once, and each worker takes its equal share of the rows
    (`pipelines.train_worker.real_batches`): no Ray Data task, so nothing waits for a CPU
    (issue 34: a sweep's trial waited forever on Ray Data's tasks while stopped trials'
    placement groups held every CPU; ``ray.data.from_arrow`` too runs a 1-CPU task). A large
    dataset (STL-10's 100k images at 96 px) streams from its shards every epoch, so memory
    stays bounded.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import ray.data

    paths = shard_paths(data_dir, manifest)
    raw_bytes = manifest["count"] * manifest["size"] ** 2 * manifest["channels"]
    if raw_bytes > MATERIALIZE_MAX_SHARE * ray.cluster_resources().get("object_store_memory", 0):
        return ray.data.read_parquet(paths, columns=["image", "label"])
    tables = [pq.read_table(path, columns=["image", "label"], filesystem=filesystem)
              for filesystem, path in map(datafs.resolve, paths)]
    return pa.concat_tables(tables)


def _worker_config(cfg: TrainConfig, run: RunSettings, run_id: str, trial: TrialPlumbing,
                   torch_threads: int | None, fallback: _Fallback | None, evaluation: dict | None):
    """What crosses the Ray hop to every worker (`pipelines.train_hop.WorkerConfig`), but the
    progress queue and the in-memory dataset, which `_fit` adds."""
    from pipelines.train_hop import WorkerConfig

    return WorkerConfig(
        train_config=cfg.to_dict(), run_settings=run.to_dict(), mlflow_run_id=run_id,
        tracking_uri=tracking.tracking_uri(), torch_threads=torch_threads, progress_queue=None,
        objective=trial.objective, evaluation=evaluation, init_checkpoint=trial.init_checkpoint,
        skipped_checkpoints=[name for name, _ in fallback.skipped] if fallback else [],
        fallback_checkpoint=fallback.where if fallback else None, in_memory=None,
        system_metrics_interval_s=system_metrics.SAMPLING_INTERVAL_S,
        # Test hook (see pipelines.train_worker): passed on, as Ray's workers do not see
        # variables set after Ray started.
        fail_at_step=int(os.environ.get("WGANCTL_TEST_FAIL_AT_STEP") or 0) or None)


def _fit(worker, run: RunSettings, trial: TrialPlumbing, dataset, resources: dict, progress: bool):
    """Ray Train's fit of ``worker``'s run on ``dataset`` (a Ray Dataset, or a small table put in the
    object store), its progress drawn here."""
    import pyarrow as pa
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.cluster.progress import train_progress
    from pipelines.train_hop import train_loop_per_worker

    reporter = train_progress(worker.train_config["steps"], enabled=progress)
    run_id = worker.mlflow_run_id
    record = holds.RecordGroup(trial.tags.get(run_tags.TRIAL_ID, run_id), trial.ledger, workers=run.workers,
                               resources=resources, queue=reporter.queue)
    in_memory = ray.put(dataset) if isinstance(dataset, pa.Table) else None
    worker = dataclasses.replace(worker, progress_queue=reporter.queue, in_memory=in_memory)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"worker": worker},
        scaling_config=ray.train.ScalingConfig(num_workers=run.workers, use_gpu=run.gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=tracking.ray_run_name(run_id),
            storage_path=run.storage_path,
            # Each try to place the workers waits holds.start_timeout_s(); after --wait-for-workers, the run fails.
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures,
                                                   controller_failure_limit=holds.start_retries(run.wait_for_workers)),
            logging_config=ray.train.LoggingConfig(log_level="WARNING" if console.quiet_now() else "INFO"),
            checkpoint_config=checkpoint_config(run),
            callbacks=[*trial.callbacks, record],
        ),
        datasets=None if isinstance(dataset, pa.Table) else {"train": dataset},
    )
    with reporter:
        return trainer.fit()
