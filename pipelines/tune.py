"""The tune stage: a Ray Tune sweep whose every trial is a train-stage run.

Under Ray Train V2, Tune cannot drive a `TorchTrainer` directly; each trial is a
function trainable (0.01 CPU: it only waits) that calls `pipelines.train.train`,
which starts its own TorchTrainer. A Train callback (`ForwardReports`) passes the
workers' checkpoint reports (with the sample-quality objective) to the trial, which
reports them to Tune with a small checkpoint pointing at the train checkpoint: ASHA
stops weak trials early, and PBT restarts a weak trial from a strong trial's
checkpoint with perturbed hyperparameters. The sweep is one MLflow parent run; each
trial is a nested child run that carries everything a train run carries (a PBT trial
gets a new child run for each exploit: its hyperparameters changed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import ray
from ray.train import UserCallback
from ray.tune import Callback
from mlflow.tracking import MlflowClient
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from wgan.config import RunSettings, TrainConfig
from wgan.data import fs as datafs
from wgan.data.manifest import load_manifest
from wgan.errors import UserError
from pipelines import objective, tracking
from pipelines.cluster import checkpoints, holds
from pipelines.tracking import run_tags
from pipelines.cluster.connect import through_ray_client
from pipelines.cluster.progress import StageProgress, is_terminal
from pipelines.search_space import SCHEDULERS, SweepSettings, load_space, to_param_space
from pipelines.train import DEFAULT_STORAGE, TrainingFailed, TrialPlumbing, train

TRIAL_CPUS = 0.01  # a trial only waits on its train task; Ray refuses a 0-CPU trial
PBT_KNOBS = ("lr", "n_critic", "lambda_gp", "clip")


@dataclass
class TuneResult:
    parent_run_id: str
    best_run_id: str | None
    best_objective: float | None
    best_config: dict[str, Any]
    trials: list[dict[str, Any]]
    registered_version: str | None = None


POINTER_FILE = "train_checkpoint.json"


class ForwardReports(UserCallback):
    """Runs in the TorchTrainer's controller: passes each report, with the path of its
    checkpoint, to the trial's queue (Tune's own callback drops the checkpoint)."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.queue.put({**metrics[0], "checkpoint_path": checkpoints.location(checkpoint) if checkpoint else None})


class TrialProgress(Callback):
    """Off a terminal, Tune's live table is replaced by a plain line now and then
    (`pipelines.cluster.progress`): trials ended out of all, how many run, the best objective yet.
    Runs on the driver, as Tune's callbacks do."""

    def __init__(self, trials: int):
        self.trials = trials
        self.best = math.inf
        self.ended: set[str] = set()  # Tune sets a trial's status after calling on_trial_complete/_error
        self.progress: StageProgress | None = None

    def __getstate__(self) -> dict:  # Tune saves its run config with the sweep's state: no lock in it
        return {**self.__dict__, "progress": None}

    def setup(self, **info) -> None:
        self.progress = StageProgress("tune", self.trials, "trials ended", terminal=False, describe=self._describe)
        self.progress.__enter__()

    @staticmethod
    def _describe(fields: dict) -> str:
        best = fields["best"]
        return (f"{fields['running']} running  "
                + (f"best Frechet distance {best:.3f}" if math.isfinite(best) else "no objective yet"))

    def _show(self, trials: list) -> None:
        if self.progress is None:
            self.setup()
        self.ended |= {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        running = sum(t.status == "RUNNING" and t.trial_id not in self.ended for t in trials)
        self.progress.update(len(self.ended), running=running, best=self.best)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(objective.METRIC)
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.best = min(self.best, value)
        self._show(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ended.add(trial.trial_id)
        self._show(trials)

    on_trial_error = on_trial_complete  # an errored trial has ended too


class ReleaseEndedTrials(Callback):
    """On the sweep's driver: when Tune ends a trial (finished, stopped early by ASHA, errored), its
    Train run's driver, controller and placement group are released at once (`pipelines.cluster.holds`),
    whatever Ray Train's own cleaner makes of it; a run's waiting notes are printed as they come."""

    NOTES_EVERY_S = 2.0  # Tune's loop steps many times a second: the ledger is asked at most this often

    def __init__(self, ledger: str):
        self.ledger = ledger  # a name: Tune saves its run config, callbacks too, with the sweep's state
        self._asked = 0.0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        holds.release(ray.get(ray.get_actor(self.ledger).take.remote(trial.trial_id)))

    on_trial_error = on_trial_complete

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.monotonic() - self._asked < self.NOTES_EVERY_S:
            return
        self._asked = time.monotonic()
        for note in ray.get(ray.get_actor(self.ledger).notes.remote()):
            print(f"tune: {note}", flush=True)


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


def wganctl_trial(config: dict[str, Any], *, base: dict, settings: RunSettings, data_dir: str, experiment: str,
                  parent_run_id: str, objective_spec: dict, cpus_per_worker: float, tracking_uri: str,
                  ledger: str) -> None:
    import mlflow
    from ray import tune
    from ray.util.queue import Empty, Queue

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
                             callbacks=[ForwardReports(queue)], objective=objective_spec,
                             cpus_per_worker=cpus_per_worker, ledger=ledger)
    kwargs = dict(experiment=experiment, run=settings, progress=False, trial=plumbing)
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


def _searcher(seed: int | None, concurrent: int):
    """Tune's default random/grid search; seeded, it draws the same trials every time (the
    loss-specific knobs are drawn through numpy's global generator, seeded here too).
    Tune ignores max_concurrent_trials for a search algorithm given as an instance, so the
    instance gets the limit itself (without it every trial's process started at once:
    32 of them ran this 24 GiB machine out of memory)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if seed is None:
        return None
    np.random.seed(seed)
    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrent)


def _scheduler(name: str, reports: int, space: dict[str, Any], whole_population_at_once: bool):
    """ASHA, PBT or none (None).

    PBT is synchronous when every trial runs at once: each perturbation then ranks the
    whole population at the same report. Asynchronous PBT ranks a trial against the
    others' latest reports and clones only a trial that was in the top quarter at one of
    its own earlier perturbations; in a small population whose trials report within
    seconds of each other that depends on who reports first (a 2-trial sweep exploited in
    2 of 5 runs here). With more trials than run at once, it stays asynchronous: waiting
    at a barrier would pause and restart every trial at every perturbation.
    """
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    if name == "asha":
        # Rungs at 1, 4, 16, ... reports: a trial goes on only if it is in the top quarter
        # of those that reached its rung (reduction factor 4: Ray Tune's default for ASHA, Li et al. 2020).
        # The default 16 reports give it rungs at 1 and 4 of 16: 32 trials one at a time spent
        # 0.23 of a full sweep and found its best within 2% (benchmarks/bench_tune.py). With 8
        # reports the rungs are 1 and 4 of 8, and the asynchronous promotions (the first trials
        # at a rung always pass) spent 0.31-0.34 (benchmarks/replay_asha.py).
        return ASHAScheduler(time_attr="training_iteration", max_t=reports, grace_period=1, reduction_factor=4)
    if name == "pbt":
        # A weak trial (bottom quarter) restarts from a top-quarter trial's checkpoint with
        # its config perturbed (Jaderberg et al. 2017).
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=pbt_interval(reports),
                                       hyperparam_mutations=pbt_mutations(space), synch=whole_population_at_once)
    return None


def pbt_interval(reports: int) -> int:
    """Reports between PBT's perturbations: about a quarter of a trial's reports, and never
    a divisor of their number, so that no perturbation falls on the last report (an exploit
    there would restart a trial only to stop it). 8 reports: perturbations at 3 and 6."""
    interval = max(1, reports // 4)
    while reports % interval == 0:
        interval += 1
    return interval


def pbt_mutations(space: dict[str, Any]) -> dict[str, Any]:
    """The swept knobs PBT may perturb: ranges and choices that do not depend on the loss
    (lambda and c exist for one loss each, and a perturbed trial keeps its donor's loss)."""
    from ray.tune.search.sample import Domain, Function

    return {k: v for k, v in space.items()
            if k in PBT_KNOBS and isinstance(v, Domain) and not isinstance(v, Function)}


@through_ray_client
def tune_sweep(data_dir: str, *, sweep: SweepSettings | None = None, space_file: str | None = None,
               base: TrainConfig | None = None, experiment: str = "wganctl-tune", register: str | None = None,
               alias: str = "champion", resume: bool = False, classifier_run: str | None = None, storage_path: str | None = None,
               address: str | None = None) -> TuneResult:
    """Sweep train options on ``data_dir``; returns the trials table and the best trial.

    ``sweep`` says how (`SweepSettings`); ``base`` is the config every trial starts from,
    which the space's knobs override. A seeded sweep (``sweep.seed``) draws the same trials
    from the same space every time. ``register``: the model name the best trial's generator is
    registered under, with ``alias`` set on the new version (`models:/NAME@ALIAS` names it)."""
    sweep = sweep or SweepSettings()
    trials, scheduler, steps, reports = sweep.trials, sweep.scheduler, sweep.steps, sweep.reports
    trial_workers, gpus_per_trial, max_concurrent = sweep.trial_workers, sweep.gpus_per_trial, sweep.max_concurrent
    if scheduler not in SCHEDULERS:
        raise UserError(f"unknown scheduler {scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    if trials < 1 or reports < 1 or steps < reports:
        raise UserError(f"--trials and --reports must be >= 1 and --steps ({steps}) >= --reports ({reports})")
    if steps % reports:
        below, above = steps - steps % reports, steps - steps % reports + reports
        raise UserError(f"--steps ({steps}) must be a multiple of --reports ({reports}), e.g. {below} or {above}: "
                        f"the objective is computed every steps/reports steps")
    if trial_workers < 1:
        raise UserError(f"--trial-workers must be >= 1, got {trial_workers}")
    if not gpus_per_trial >= 0:
        raise UserError(f"--gpus-per-trial must be >= 0 (0: CPU trials), got {gpus_per_trial}")
    if max_concurrent is not None and max_concurrent < 1:
        raise UserError(f"--max-concurrent must be >= 1 (default: what fits), got {max_concurrent}")
    if sweep.objective_samples < 2:
        raise UserError(f"--objective-samples must be >= 2 (a Frechet distance needs their covariance), "
                        f"got {sweep.objective_samples}")
    if sweep.seed is not None and sweep.seed < 0:
        raise UserError(f"--seed must be zero or positive, got {sweep.seed}")
    tracking.check_experiment_name(experiment)
    if register:
        _check_registry_names(register, alias)
    param_space = to_param_space(load_space(space_file))
    if scheduler == "pbt" and reports < 3:
        raise UserError(f"--scheduler pbt needs --reports 3 or more (a perturbation before the last report), got {reports}")
    if scheduler == "pbt" and not pbt_mutations(param_space):
        raise UserError(f"--scheduler pbt needs a range or choice of {', '.join(PBT_KNOBS)} in the space to perturb "
                        f"(lambda and c only without a swept loss): add one to --space")
    manifest = load_manifest(data_dir, verify=True)
    base = dataclasses.replace(base or TrainConfig(), steps=steps)
    storage_path = datafs.absolute(storage_path or DEFAULT_STORAGE)
    checkpoints.check_storage(storage_path)
    every = max(1, steps // reports)
    settings = RunSettings(workers=trial_workers, gpu=gpus_per_trial > 0, checkpoint_every=every, sample_every=every,
                           log_every=max(1, min(RunSettings.log_every, every)), storage_path=storage_path,
                           max_failures=0, wait_for_workers=sweep.wait_for_workers).validate()
    # Every combination must be valid before anything starts.
    settings.check_fits(TrainConfig.from_dict({**base.to_dict(), "image_size": manifest["size"],
                                               "channels": manifest["channels"]}).resolved(),
                        images=manifest["count"])

    from ray import tune

    from pipelines.classifier import load_classifier
    from pipelines.cluster.reference import reference_statistics
    from pipelines.cluster.connect import check_placeable, init_ray

    client = tracking.client(needs=f"classifier run {classifier_run!r}" if classifier_run
                             else f"classifier trained on {data_dir}")
    classifier_run = classifier_run or _latest_classifier(client, data_dir)
    classifier = load_classifier(classifier_run)
    interrupted = _unfinished_sweep(client, experiment) if resume else None
    local = init_ray(address)
    total_cpus = ray.cluster_resources().get("CPU", 1)
    if gpus_per_trial > 0:
        cpus_per_worker = 1.0
        concurrent = max_concurrent or max(1, int(ray.cluster_resources().get("GPU", 0) // (gpus_per_trial * trial_workers)))
    else:
        concurrent = max_concurrent or max(1, int(total_cpus - 1) if local else int(total_cpus // trial_workers))
        # Leave a whole CPU for Ray Data's read tasks (they wait forever for less), split
        # the rest among the running trials' workers.
        spare = total_cpus - 1 - TRIAL_CPUS * concurrent
        cpus_per_worker = max(0.1, spare / (concurrent * trial_workers)) if local else 1.0
    check_placeable({"CPU": cpus_per_worker, **({"GPU": 1} if gpus_per_trial > 0 else {})}, trial_workers,
                    local=local, workers_option="--trial-workers", gpu_option="--gpus-per-trial")
    mu, sigma = reference_statistics(data_dir, classifier, classifier_run)
    objective_spec = objective.objective_spec(classifier, mu, sigma, sweep.objective_samples)
    parent_run_id, tune_path = _parent_run(client, experiment, interrupted, data_dir, base, settings, trials,
                                           scheduler)
    ledger_name = f"wganctl-holds-{parent_run_id}"
    ledger = holds.ledger(ledger_name)  # this driver's: it lives as long as the sweep
    trainable = tune.with_resources(
        tune.with_parameters(wganctl_trial, base=base.to_dict(), settings=settings, data_dir=data_dir,
                             experiment=experiment, parent_run_id=parent_run_id,
                             objective_spec=objective_spec, cpus_per_worker=cpus_per_worker,
                             tracking_uri=tracking.tracking_uri(), ledger=ledger_name),
        {"CPU": TRIAL_CPUS})
    if resume:
        tuner = tune.Tuner.restore(tune_path, trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=objective.METRIC, mode="min", num_samples=trials,
                                        scheduler=_scheduler(scheduler, reports, param_space, trials <= concurrent),
                                        search_alg=_searcher(sweep.seed, concurrent),
                                        max_concurrent_trials=None if sweep.seed is not None else concurrent),
            run_config=tune.RunConfig(name=datafs.name(tune_path), storage_path=datafs.parent(tune_path),
                                      failure_config=tune.FailureConfig(max_failures=0),
                                      **_console(trials, ledger_name)),
        )
    try:
        with _tune_output():
            grid = tuner.fit()
    finally:  # an interrupted sweep (Ctrl-C) too leaves nothing reserved
        holds.release(ray.get(ledger.take_all.remote()))
        ray.kill(ledger)
    return _summarise(client, grid, parent_run_id, experiment, register, alias, storage_path, reports)


def _console(trials: int, ledger: str) -> dict[str, Any]:
    """RunConfig arguments: on a terminal Tune's own live table; elsewhere (a file, a pipe) a
    plain line now and then instead (`TrialProgress`), and Tune silent (see `_tune_output`).
    Either way `ReleaseEndedTrials`."""
    if is_terminal(sys.stdout):
        return {"callbacks": [ReleaseEndedTrials(ledger)]}
    return {"verbose": 0, "callbacks": [TrialProgress(trials), ReleaseEndedTrials(ledger)]}


@contextlib.contextmanager
def _tune_output() -> Iterator[None]:
    """Off a terminal, Tune's legacy output engine while it runs (``RAY_AIR_NEW_OUTPUT=0``, read as
    the sweep starts): the new one prints the experiment's configuration and paths even at
    ``verbose=0``; the legacy one then prints nothing. A value the user set is kept."""
    if is_terminal(sys.stdout) or "RAY_AIR_NEW_OUTPUT" in os.environ:
        yield
        return
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        os.environ.pop("RAY_AIR_NEW_OUTPUT", None)


def _latest_classifier(client: MlflowClient, data_dir: str) -> str:
    """The newest finished classifier run trained on exactly this dataset (same manifest hash)."""
    from wgan.data.manifest import manifest_sha256

    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`{run_tags.STAGE}` = 'classifier' and attributes.status = 'FINISHED' "
                                            f"and tags.`{run_tags.DATA_MANIFEST_SHA256}` = '{manifest_sha256(data_dir)}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserError(f"no classifier trained on {data_dir}: run `wganctl train-classifier {data_dir}` first "
                        f"(its features score the trials), or pass --classifier RUN_ID")
    return runs[0].info.run_id


def _unfinished_sweep(client: MlflowClient, experiment: str):
    """The experiment's newest sweep run that did not finish (what --resume continues); refused if none."""
    exp = client.get_experiment_by_name(experiment)
    open_runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{run_tags.STAGE}` = 'tune' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not open_runs:
        raise UserError(f"no unfinished sweep in experiment {experiment!r} to resume: start one without --resume")
    return open_runs[0]


def _parent_run(client: MlflowClient, experiment: str, interrupted, data_dir: str, base: TrainConfig,
                settings: RunSettings, trials: int, scheduler: str) -> tuple[str, str]:
    """The sweep's MLflow run: ``interrupted`` (a run of `_unfinished_sweep`) reopened, else a new one."""
    if interrupted is not None:
        client.update_run(interrupted.info.run_id, status="RUNNING")
        return interrupted.info.run_id, interrupted.data.tags[run_tags.TUNE_PATH]
    exp_id = tracking.experiment_id(client, experiment)
    run = client.create_run(exp_id, tags={run_tags.STAGE: "tune", run_tags.RUN_NAME: f"sweep-{trials}x-{scheduler}",
                                          run_tags.CODE_VERSION: tracking.code_version(), run_tags.DATA_DIR: data_dir})
    tune_path = datafs.join(settings.storage_path, f"wganctl-tune-{run.info.run_id}")
    client.set_tag(run.info.run_id, run_tags.TUNE_PATH, tune_path)
    # base.*: what every trial's config starts from (a swept knob overrides it); trial.*: how each runs
    params = {"trials": trials, "scheduler": scheduler, "data_dir": data_dir,
              **{f"base.{k}": v for k, v in base.to_dict().items()},
              **{f"trial.{k}": v for k, v in settings.to_dict().items()}}
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id, tune_path


def _summarise(client: MlflowClient, grid, parent_run_id: str, experiment: str, register: str | None,
               alias: str, storage_path: str, total_reports: int) -> TuneResult:
    children: dict[str, Any] = {}
    for run in client.search_runs([tracking.experiment_id(client, experiment)],
                                  filter_string=f"tags.`{run_tags.PARENT_RUN}` = '{parent_run_id}'",
                                  order_by=["attributes.start_time DESC"]):
        children.setdefault(run.data.tags.get(run_tags.TRIAL_ID), run)  # a PBT trial's newest run
    rows = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or _trial_id_from_path(result.path)
        child = children.get(trial_id)
        history = result.metrics_dataframe
        best = None
        if history is not None and objective.METRIC in history:
            best = float(history[objective.METRIC].min())
        reports = 0 if history is None else len(history)
        status = "error" if result.error else ("finished" if reports >= total_reports else "stopped early")
        if child is not None and child.info.status == "RUNNING":
            # Tune ends a trial at its last report (ASHA's max_t) or earlier (a lost rung),
            # which can be before its driver closed the run: close it here.
            _close_trial_run(client, child.info.run_id, finished=status == "finished", storage_path=storage_path)
        rows.append({"run_id": child.info.run_id if child else "", "status": status,
                     "reports": reports,
                     "objective": best, **{k: v for k, v in (result.config or {}).items()}})
    scored = [r for r in rows if r["objective"] is not None and math.isfinite(r["objective"]) and r["run_id"]]
    best_row = min(scored, key=lambda r: r["objective"]) if scored else None
    _log_table(client, parent_run_id, rows)
    version = None
    if best_row:
        client.set_tag(parent_run_id, run_tags.BEST_RUN, best_row["run_id"])
        client.log_metric(parent_run_id, f"best/{objective.METRIC}", best_row["objective"])
        if register:
            version = _register(client, best_row["run_id"], register, alias, storage_path)
            client.set_tag(parent_run_id, run_tags.REGISTERED_ALIAS, f"{tracking.MODEL_URI_PREFIX}{register}@{alias}")
    client.set_terminated(parent_run_id, status="FINISHED")
    config = {k: v for k, v in best_row.items() if k not in ("run_id", "status", "reports", "objective")} if best_row else {}
    return TuneResult(parent_run_id, best_row["run_id"] if best_row else None,
                      best_row["objective"] if best_row else None, config, rows, version)


def _close_trial_run(client: MlflowClient, run_id: str, *, finished: bool, storage_path: str) -> None:
    if not finished:
        client.set_tag(run_id, run_tags.EARLY_STOPPED, "true")
        client.set_terminated(run_id, status="KILLED")
        return
    saved, _ = checkpoints.newest_loadable(storage_path, run_id)
    if saved:
        payload = checkpoints.load(saved)
        tracking.log_generator_model(run_id, payload)
        client.set_tag(run_id, run_tags.COMPLETED_STEPS, str(payload["step"]))
    client.set_terminated(run_id, status="FINISHED")


def _trial_id_from_path(path: str | None) -> str | None:
    """Tune names trial directories `<trainable>_<trial id>_<index>_<params>...`; trial ids look like `1a2b3_00007`."""
    found = re.search(r"_([0-9a-f]{5}_\d{5})_", datafs.name(path)) if path else None
    return found.group(1) if found else None


def _log_table(client: MlflowClient, parent_run_id: str, rows: list[dict[str, Any]]) -> None:
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("run_id", "status", "reports", "objective"), k))
    tracking.log_csv(client, parent_run_id, rows, "trials.csv", fieldnames=keys)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    knobs = [k for k in keys if k not in ("run_id", "status", "reports", "objective")]
    if not knobs:
        return
    fig, axes = plt.subplots(1, len(knobs), figsize=(3.5 * len(knobs), 3), squeeze=False)
    for ax, knob in zip(axes[0], knobs):
        pts = [(r[knob], r["objective"]) for r in rows if r.get(knob) is not None and r["objective"] is not None]
        if pts and all(isinstance(x, (int, float)) for x, _ in pts):
            ax.scatter([x for x, _ in pts], [y for _, y in pts], s=12)
            if knob in ("lr", "lambda_gp") and min(x for x, _ in pts) > 0:
                ax.set_xscale("log")
        elif pts:
            labels = sorted({str(x) for x, _ in pts})
            ax.scatter([labels.index(str(x)) for x, _ in pts], [y for _, y in pts], s=12)
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(knob)
        ax.set_ylabel("Frechet distance (lower is better)")
    fig.tight_layout()
    client.log_figure(parent_run_id, fig, "plots/objective_vs_hyperparameters.png")
    plt.close(fig)


def _check_registry_names(name: str, alias: str) -> None:
    """Refuse a model name or alias the registry would refuse, before the sweep rather than after it."""
    from mlflow.utils import validation

    # MLflow's own checks (private: mlflow 3.18 renamed _validate_model_alias_name* to _validate_alias_name*)
    check_alias = getattr(validation, "_validate_alias_name", None) or validation._validate_model_alias_name
    check_reserved = (getattr(validation, "_validate_alias_name_reserved", None)
                      or validation._validate_model_alias_name_reserved)
    try:
        validation._validate_model_name(name)
        check_alias(alias)
        check_reserved(alias)
    except mlflow.exceptions.MlflowException as err:
        raise UserError(f"--register {name} --alias {alias}: {err.message.splitlines()[0]}")


def _register(client: MlflowClient, run_id: str, name: str, alias: str, storage_path: str) -> str:
    """Register the best trial's generator and point ``alias`` at the new version; a trial
    stopped early gets its model logged from its checkpoint first."""
    import mlflow

    if not any(m.name == tracking.MODEL_NAME for m in client.search_logged_models(
            experiment_ids=[client.get_run(run_id).info.experiment_id],
            filter_string=f"source_run_id = '{run_id}'")):
        saved, unreadable = checkpoints.newest_loadable(storage_path, run_id)
        if not saved:
            why = f": {unreadable[0][1]}" if unreadable else ""
            raise TrainingFailed(f"best trial {run_id} has no checkpoint that loads to register{why}")
        tracking.log_generator_model(run_id, checkpoints.load(saved))
    version = mlflow.register_model(f"runs:/{run_id}/{tracking.MODEL_NAME}", name)
    client.set_registered_model_alias(name, alias, version.version)
    return version.version
