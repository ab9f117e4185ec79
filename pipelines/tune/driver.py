"""The tune stage's driver: `tune_sweep` checks the sweep, sizes the trials to the cluster, runs
Ray Tune's Tuner over `pipelines.tune.trial.wganctl_trial`, then logs the trials table into the
sweep's MLflow run (each trial is a nested child run that carries everything a train run
carries; a PBT trial gets a new child run for each exploit: its hyperparameters changed) and
registers the best trial's generator.

ASHA stops weak trials early, and PBT restarts a weak trial from a strong trial's checkpoint
with perturbed hyperparameters (`pipelines.tune.schedulers`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mlflow
import ray
from mlflow.tracking import MlflowClient

from wgan.config import RunSettings, TrainConfig
from wgan.data import fs as datafs
from wgan.data.manifest import load_manifest
from wgan.errors import UserError
from pipelines import objective, tracking
from pipelines.cluster import checkpoints, holds
from pipelines.tracking import run_tags
from pipelines.cluster.connect import through_ray_client
from pipelines.cluster.progress import is_terminal
from pipelines.classifier import find_classifier, matching_classifier
from pipelines.search_space import SweepSettings, load_space, to_param_space
from pipelines.train import DEFAULT_STORAGE, TrainingFailed
from pipelines.tune.callbacks import ReleaseEndedTrials, TrialProgress
from pipelines.tune.schedulers import PBT_KNOBS, pbt_mutations, scheduler, searcher
from pipelines.tune.trial import TrialSpec, wganctl_trial

TRIAL_CPUS = 0.01  # a trial only waits on its train task; Ray refuses a 0-CPU trial


@dataclass
class TuneResult:
    parent_run_id: str
    best_run_id: str | None
    best_objective: float | None
    best_config: dict[str, Any]
    trials: list[dict[str, Any]]
    registered_version: str | None = None


@through_ray_client
def tune_sweep(data_dir: str, sweep: SweepSettings | None = None, base: TrainConfig | None = None, *,
               experiment: str = "wganctl-tune", resume: bool = False, address: str | None = None) -> TuneResult:
    """Sweep train options on ``data_dir``; returns the trials table and the best trial.

    ``sweep`` says how (`SweepSettings`: its size, scheduler, space, classifier, storage, and the
    model name the best trial's generator is registered under); ``base`` is the config every
    trial starts from, which the space's knobs override. A seeded sweep (``sweep.seed``) draws the
    same trials from the same space every time. ``resume``: continue the experiment's interrupted
    sweep."""
    sweep = (sweep or SweepSettings()).validate()
    steps = sweep.steps
    tracking.check_experiment_name(experiment)
    if sweep.register:
        _check_registry_names(sweep.register, sweep.registered_alias)
    param_space = to_param_space(load_space(sweep.space))
    if sweep.scheduler == "pbt" and not pbt_mutations(param_space):
        raise UserError(f"--scheduler pbt needs a range or choice of {', '.join(PBT_KNOBS)} in the space to perturb "
                        f"(lambda and c only without a swept loss): add one to --space")
    manifest = load_manifest(data_dir, verify=True)
    base = dataclasses.replace(base or TrainConfig(), steps=steps)
    settings = _trial_settings(sweep, base, manifest)

    from pipelines.cluster.reference import reference_statistics
    from pipelines.cluster.connect import init_ray

    client = tracking.client(needs=f"classifier run {sweep.classifier!r}" if sweep.classifier
                             else f"classifier for {manifest.get('dataset')} at {manifest['size']} px")
    classifier_run = sweep.classifier or find_classifier(client, manifest)
    classifier = matching_classifier(client, classifier_run, manifest, "the sweep's samples")
    interrupted = _unfinished_sweep(client, experiment) if resume else None
    concurrent, cpus_per_worker = _concurrency(sweep, local=init_ray(address))
    mu, sigma = reference_statistics(data_dir, classifier, classifier_run)
    parent_run_id, tune_path = _parent_run(client, experiment, interrupted, data_dir, base, settings, sweep.trials,
                                           sweep.scheduler)
    ledger_name = f"wganctl-holds-{parent_run_id}"
    ledger = holds.ledger(ledger_name)  # this driver's: it lives as long as the sweep
    spec = TrialSpec(base=base.to_dict(), settings=settings, data_dir=data_dir, experiment=experiment,
                     parent_run_id=parent_run_id, cpus_per_worker=cpus_per_worker, tracking_uri=tracking.tracking_uri(),
                     objective_spec=objective.objective_spec(classifier, mu, sigma, sweep.objective_samples),
                     ledger=ledger_name)
    tuner = _tuner(sweep, param_space, spec, tune_path, concurrent, resume)
    try:
        with _tune_output():
            grid = tuner.fit()
    finally:  # an interrupted sweep (Ctrl-C) too leaves nothing reserved
        holds.release(ray.get(ledger.take_all.remote()))
        ray.kill(ledger)
    return _summarise(client, grid, parent_run_id, experiment, sweep, settings.storage_path)


def _trial_settings(sweep: SweepSettings, base: TrainConfig, manifest: dict) -> RunSettings:
    """Each trial's run settings: a checkpoint and a sample grid at every report, no restarts; every
    combination with ``base`` checked against the data before anything starts."""
    storage_path = datafs.absolute(sweep.storage_path or DEFAULT_STORAGE)
    checkpoints.check_storage(storage_path)
    every = max(1, sweep.steps // sweep.reports)
    settings = RunSettings(workers=sweep.trial_workers, gpu=sweep.gpus_per_trial > 0, checkpoint_every=every,
                           sample_every=every, log_every=max(1, min(RunSettings.log_every, every)),
                           storage_path=storage_path, max_failures=0,
                           wait_for_workers=sweep.wait_for_workers).validate()
    settings.check_fits(TrainConfig.from_dict({**base.to_dict(), "image_size": manifest["size"],
                                               "channels": manifest["channels"]}).resolved(),
                        images=manifest["count"])
    return settings


def _concurrency(sweep: SweepSettings, local: bool) -> tuple[int, float]:
    """How many trials run at once, and each trial worker's CPUs (refused here if they cannot be placed)."""
    from pipelines.cluster.connect import check_placeable

    trial_workers, resources = sweep.trial_workers, ray.cluster_resources()
    total_cpus = resources.get("CPU", 1)
    if sweep.gpus_per_trial > 0:
        cpus_per_worker = 1.0
        concurrent = sweep.max_concurrent or max(1, int(resources.get("GPU", 0) // (sweep.gpus_per_trial * trial_workers)))
    else:
        concurrent = sweep.max_concurrent or max(1, int(total_cpus - 1) if local else int(total_cpus // trial_workers))
        # Leave a whole CPU for Ray Data's read tasks (they wait forever for less), split
        # the rest among the running trials' workers.
        spare = total_cpus - 1 - TRIAL_CPUS * concurrent
        cpus_per_worker = max(0.1, spare / (concurrent * trial_workers)) if local else 1.0
    check_placeable({"CPU": cpus_per_worker, **({"GPU": 1} if sweep.gpus_per_trial > 0 else {})}, trial_workers,
                    local=local, workers_option="--trial-workers", gpu_option="--gpus-per-trial")
    return concurrent, cpus_per_worker


def _tuner(sweep: SweepSettings, param_space: dict, spec: TrialSpec, tune_path: str, concurrent: int, resume: bool):
    """Ray Tune's Tuner over `wganctl_trial`, or the interrupted sweep's, restored (``resume``)."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(wganctl_trial, spec=spec), {"CPU": TRIAL_CPUS})
    if resume:
        return tune.Tuner.restore(tune_path, trainable, resume_unfinished=True, resume_errored=False)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=objective.METRIC, mode="min", num_samples=sweep.trials,
                                    scheduler=scheduler(sweep.scheduler, sweep.reports, param_space,
                                                         sweep.trials <= concurrent),
                                    search_alg=searcher(sweep.seed, concurrent),
                                    max_concurrent_trials=None if sweep.seed is not None else concurrent),
        run_config=tune.RunConfig(name=datafs.name(tune_path), storage_path=datafs.parent(tune_path),
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  **_console(sweep.trials, spec.ledger)),
    )


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


def _summarise(client: MlflowClient, grid, parent_run_id: str, experiment: str, sweep: SweepSettings,
               storage_path: str) -> TuneResult:
    """The trials table logged into the sweep's run, its best trial tagged (and registered with
    ``sweep.register``), the sweep's run closed."""
    rows = _trial_rows(client, grid, parent_run_id, experiment, storage_path, sweep.reports)
    scored = [r for r in rows if r["objective"] is not None and math.isfinite(r["objective"]) and r["run_id"]]
    best_row = min(scored, key=lambda r: r["objective"]) if scored else None
    _log_table(client, parent_run_id, rows)
    version = None
    if best_row:
        client.set_tag(parent_run_id, run_tags.BEST_RUN, best_row["run_id"])
        client.log_metric(parent_run_id, f"best/{objective.METRIC}", best_row["objective"])
        if sweep.register:
            name, alias = sweep.register, sweep.registered_alias
            version = _register(client, best_row["run_id"], name, alias, storage_path)
            client.set_tag(parent_run_id, run_tags.REGISTERED_ALIAS, f"{tracking.MODEL_URI_PREFIX}{name}@{alias}")
    client.set_terminated(parent_run_id, status="FINISHED")
    config = {k: v for k, v in best_row.items() if k not in ("run_id", "status", "reports", "objective")} if best_row else {}
    return TuneResult(parent_run_id, best_row["run_id"] if best_row else None,
                      best_row["objective"] if best_row else None, config, rows, version)


def _trial_rows(client: MlflowClient, grid, parent_run_id: str, experiment: str, storage_path: str,
                total_reports: int) -> list[dict[str, Any]]:
    """One row per trial: its MLflow run, how it ended, its best objective and its config; a run Tune
    ended before its driver closed it is closed here."""
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
    return rows


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
