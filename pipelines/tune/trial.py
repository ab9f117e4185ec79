"""A sweep's trial: a Ray Tune function trainable that runs one train-stage run.

Under Ray Train V2, Tune cannot drive a `TorchTrainer` directly; each trial (0.01 CPU: it only
waits) calls `pipelines.train.train` in a `TrainDriver` actor, which starts its own TorchTrainer.
A Train callback (`pipelines.tune.reports.ForwardReports`) passes the workers' checkpoint reports (with the
sample-quality objective) to the trial, which reports them to Tune with a small checkpoint
pointing at the train checkpoint, so that PBT can start another trial from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from mlflow.tracking import MlflowClient
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from wgan.config import RunSettings, TrainConfig
from wgan.data import fs as datafs
from pipelines import objective, tracking
from pipelines.cluster import checkpoints, holds
from pipelines.tracking import run_tags
from pipelines.train import TrialPlumbing, train
from pipelines.tune.reports import ForwardReports

POINTER_FILE = "train_checkpoint.json"


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a sweep shares, sent once with the trainable (`tune.with_parameters`)."""

    base: dict  # the TrainConfig every trial starts from, as a dict; the trial's config overrides it
    settings: RunSettings
    data_dir: str
    experiment: str
    parent_run_id: str  # the sweep's MLflow run
    objective_spec: dict  # `pipelines.objective.objective_spec`
    cpus_per_worker: float
    tracking_uri: str  # the driver's store, whatever the worker's environment says
    ledger: str  # the sweep's `pipelines.cluster.holds.GroupLedger`, by name


def _report_to_tune(item: dict[str, Any]) -> None:
    """Report to Tune with a checkpoint that points at the train checkpoint (on the
    storage every node shares), so that PBT can hand it to another trial."""
    import tempfile

    from ray import tune

    path = item.pop("checkpoint_path", None)
    # Tune's live table shows a trial's first four metrics: step, objective, critic gap, penalty.
    first = ("step", objective.METRIC, "wasserstein_estimate", "critic_gap", "gradient_penalty")
    item = {**{k: item[k] for k in first if k in item}, **item}
    if path is None:
        tune.report(item)
        return
    with tempfile.TemporaryDirectory() as directory:
        run_name = datafs.name(datafs.parent(path))
        pointer = {"path": path, "run_id": run_name.removeprefix("wganctl-"), "step": item.get("step"),
                   "objective": item.get(objective.METRIC)}
        Path(directory, POINTER_FILE).write_text(json.dumps(pointer))
        tune.report(item, checkpoint=tune.Checkpoint.from_directory(directory))


def _donor_pointer() -> dict[str, Any] | None:
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return json.loads(Path(directory, POINTER_FILE).read_text())


def _donor_checkpoint(trial_id: str, donor: dict[str, Any]) -> str | None:
    """The donor's checkpoint PBT chose, or, where a fault left it unreadable, the donor run's newest
    earlier one that loads (said on the console); None (train afresh) when none of them loads."""
    usable, skipped = checkpoints.loadable_at_or_before(donor["path"])
    if skipped:
        went_on = f"going on from its {datafs.name(usable)}" if usable else "none loads: training afresh"
        print(f"tune: trial {trial_id}: skipped checkpoint(s) of donor run {donor['run_id']} that cannot be read: "
              f"{'; '.join(f'{name} ({why})' for name, why in skipped)}; {went_on}", flush=True)
    return usable


def wganctl_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """One trial: its train run with ``config`` over ``spec.base`` (a new run, a PBT exploit's new run from
    the donor's checkpoint, or a resumed sweep's own run), its reports passed on to Tune."""
    import mlflow
    from ray import tune
    from ray.util.queue import Empty, Queue

    base, data_dir, experiment, parent_run_id = spec.base, spec.data_dir, spec.experiment, spec.parent_run_id
    tracking_uri, ledger = spec.tracking_uri, spec.ledger

    # The driver's tracking store, whatever this worker's environment says (Ray's workers
    # inherit the environment of the process that started Ray, not of the sweep's driver).
    mlflow.set_tracking_uri(tracking_uri)
    trial_id = tune.get_context().get_trial_id()
    client = MlflowClient(tracking_uri)
    earlier = client.search_runs([tracking.experiment_id(client, experiment)],
                                 filter_string=f"tags.`{run_tags.TRIAL_ID}` = '{trial_id}' and tags.`{run_tags.PARENT_RUN}` = '{parent_run_id}'",
                                 order_by=["attributes.start_time DESC"])
    donor = _donor_pointer()
    exploited = donor is not None and (not earlier or donor["run_id"] != earlier[0].info.run_id)
    if earlier and earlier[0].info.status == "FINISHED" and not exploited:
        # A resumed sweep whose last saved state missed this trial's end (the driver was
        # killed first): report its result from MLflow instead of training it again.
        history = client.get_metric_history(earlier[0].info.run_id, objective.METRIC)
        tune.report({objective.METRIC: min((m.value for m in history), default=float("nan")),
                     "step": int(earlier[0].data.tags.get(run_tags.COMPLETED_STEPS, 0))})
        return
    chosen = {k: v for k, v in config.items() if v is not None}
    if exploited and earlier and earlier[0].info.status == "RUNNING":
        # PBT: the run this trial had so far ends here; the trial goes on from another's checkpoint.
        client.set_tag(earlier[0].info.run_id, run_tags.PBT_EXPLOITED, f"continued from {donor['run_id']}")
        client.set_terminated(earlier[0].info.run_id, status="KILLED")
    if exploited and donor["step"] >= TrainConfig.from_dict({**base, **chosen}).steps:
        # PBT cloned a trial at its last report: nothing is left to train.
        tune.report({"step": donor["step"], objective.METRIC: donor["objective"]})
        return
    queue = Queue(actor_options={"num_cpus": 0})
    plumbing = TrialPlumbing(parent_run_id=parent_run_id, tags={run_tags.TRIAL_ID: trial_id},
                             callbacks=[ForwardReports(queue)], objective=spec.objective_spec,
                             cpus_per_worker=spec.cpus_per_worker, ledger=ledger)
    kwargs = dict(experiment=experiment, run=spec.settings, progress=False, trial=plumbing)
    if exploited:
        # PBT: this trial goes on from another trial's checkpoint with perturbed
        # hyperparameters, as a new child run (a run's parameters cannot change).
        plumbing.tags[run_tags.PBT_DONOR] = donor["run_id"]
        plumbing.init_checkpoint = _donor_checkpoint(trial_id, donor)
        kwargs.update(cfg=TrainConfig.from_dict({**base, **chosen}), data_dir=data_dir)
    elif earlier:  # a resumed sweep: continue this trial's own run from its checkpoint
        kwargs.update(resume=earlier[0].info.run_id)
    else:
        kwargs.update(cfg=TrainConfig.from_dict({**base, **chosen}), data_dir=data_dir)
    # Tune places a trial's children in the trial's own (tiny) placement group; the
    # TorchTrainer and its Ray Data actors must be scheduled on the cluster instead.
    outside = PlacementGroupSchedulingStrategy(placement_group=None)
    driver = TrainDriver.options(scheduling_strategy=outside).remote()
    # What the trial's earlier run held (PBT's exploit, a restored trial) is released now.
    holds.release(ray.get(ray.get_actor(ledger).hold.remote(trial_id, driver)))
    training = driver.run.remote(kwargs, tracking_uri)
    while True:
        try:
            _report_to_tune(queue.get(timeout=0.5))
            continue
        except Empty:
            pass
        if ray.wait([training], timeout=0)[0]:
            while not queue.empty():
                _report_to_tune(queue.get_nowait())
            break
    ray.get(training)  # raises the run's failure, which marks the trial errored


@ray.remote(num_cpus=0, max_restarts=0)
class TrainDriver:
    """Runs a trial's train run (`pipelines.train.train`, which starts its TorchTrainer) outside the
    trial's placement group. An actor, not a task: a non-detached actor dies with its owner (the
    trial), and the sweep can kill it by handle (`pipelines.cluster.holds`)."""

    def run(self, kwargs: dict, tracking_uri: str) -> None:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        train(**kwargs)
