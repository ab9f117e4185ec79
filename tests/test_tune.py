"""The tune stage: real Ray Tune sweeps of real train runs, tracked in a real MLflow store.

On two CPUs one trial runs at a time (one CPU stays free for Ray Data), so a grid
search runs its trials in the order given: that makes ASHA's decisions predictable.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.tracking.run_tags import TRIAL_ID as TRIAL_TAG
from pipelines.search_space import SweepSettings
from pipelines.tune import pbt_interval, tune_sweep
from wgan import checkpoint as ckpt
from wgan.config import TrainConfig
from wgan.errors import UserError


def test_an_invalid_space_fails_at_once_with_the_key_path(tiny_dataset, mlflow_store, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {loguniform: [1.0e-5]}\n")
    with pytest.raises(UserError, match=r"space\.lr\.loguniform"):
        tune_sweep(tiny_dataset, sweep=SweepSettings(space=str(space)))
    space.write_text("lamda_gp: {uniform: [1, 10]}\n")
    with pytest.raises(UserError, match=r"space\.lamda_gp"):
        tune_sweep(tiny_dataset, sweep=SweepSettings(space=str(space)))


def children(client: MlflowClient, parent_run_id: str) -> list:
    exp = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def test_asha_stops_weak_trials_survives_a_diverging_one_and_registers_the_best(tiny_dataset, ray_session,
                                                                                mlflow_with_classifier, tmp_path):
    classifier_run = mlflow_with_classifier
    space = tmp_path / "space.yaml"
    # Run in this order: a trial that learns; a barely-moving one (its samples stay the
    # untrained generator's, far from the data); one whose lr makes Adam blow the critic
    # up at its second step (seen: non-finite at step 2).
    space.write_text("lr: {grid: [1.0e-3, 1.0e-9, 1.0e+4]}\nn_critic: 1\n")
    result = tune_sweep(tiny_dataset, sweep=SweepSettings(trials=1, scheduler="asha", steps=12, reports=3,
                                                          objective_samples=200, space=str(space), register="best-generator", classifier=classifier_run, storage_path=str(tmp_path / "ray")), experiment="sweep", base=TrainConfig(width=8, z_dim=16, batch=16))

    by_lr = sorted(result.trials, key=lambda row: row["lr"])
    statuses = [(row["lr"], row["status"], row["reports"]) for row in by_lr]
    # ASHA (a rung at report 1; the next, at 4, is past the last): the barely-moving trial loses there.
    assert statuses == [(1e-9, "stopped early", 1), (1e-3, "finished", 3), (1e4, "error", 0)], statuses
    learner = by_lr[1]
    assert result.best_run_id == learner["run_id"]
    assert result.best_objective < by_lr[0]["objective"]

    client = MlflowClient()
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["wganctl.best_run_id"] == learner["run_id"]
    runs = {r.info.run_id: r for r in children(client, result.parent_run_id)}
    assert set(runs) == {row["run_id"] for row in result.trials}  # every trial is a nested child run
    assert len({r.data.tags[TRIAL_TAG] for r in runs.values()}) == 3
    assert runs[learner["run_id"]].info.status == "FINISHED"
    stopped = runs[by_lr[0]["run_id"]]
    assert stopped.info.status == "KILLED" and stopped.data.tags["wganctl.early_stopped"] == "true"
    diverged = runs[by_lr[2]["run_id"]]
    assert diverged.info.status == "FAILED" and "non-finite" in diverged.data.tags["wganctl.failure_reason"]
    # each child carries what a train run carries
    learner_run = runs[learner["run_id"]]
    assert learner_run.data.params["lr"] == "0.001" and learner_run.data.params["n_critic"] == "1"
    assert [m.step for m in client.get_metric_history(learner["run_id"], "objective/frechet_distance")] == [4, 8, 12]

    table = list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{result.parent_run_id}/trials.csv"))))
    assert sorted(row["run_id"] for row in table) == sorted(runs)
    assert "plots/objective_vs_hyperparameters.png" in {
        a.path for a in client.list_artifacts(result.parent_run_id, "plots")}

    version = client.get_model_version("best-generator", result.registered_version)
    assert version.run_id == learner["run_id"]
    model = mlflow.pyfunc.load_model(f"models:/best-generator/{result.registered_version}")
    images = model.predict(np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32))
    assert images.shape == (3, 28, 28, 1)

    # the new version carries the alias, and models:/NAME@ALIAS works where a run id does
    assert version.aliases == ["champion"]
    assert client.get_model_version_by_alias("best-generator", "champion").version == result.registered_version
    assert parent.data.tags["wganctl.registered_alias"] == "models:/best-generator@champion"
    sampled = CliRunner().invoke(app, ["sample", "models:/best-generator@champion", "--n", "3",
                                       "--out", str(tmp_path / "champion.npy")])
    assert sampled.exit_code == 0, sampled.output
    assert np.load(tmp_path / "champion.npy").shape == (3, 28, 28, 1)
    unknown = CliRunner().invoke(app, ["sample", "models:/best-generator@nosuch", "--n", "3",
                                       "--out", str(tmp_path / "nosuch.npy")])
    assert unknown.exit_code == 2 and len(unknown.output.strip().splitlines()) == 1, unknown.output
    assert "alias 'nosuch'" in unknown.output and not (tmp_path / "nosuch.npy").exists()


def _processes_of(driver_pid: int) -> set[int]:
    """The driver, everything it started (its local Ray: GCS, raylet, workers) and its session."""
    parents: dict[int, int] = {}
    session: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
                if os.getsid(int(entry.name)) == driver_pid:
                    session.add(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = {driver_pid}, [driver_pid]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found.add(child)
                frontier.append(child)
    return found | session


def _registered_checkpoints(storage: Path, run_id: str) -> list[str]:
    snapshot = storage / f"wganctl-{run_id}" / "checkpoint_manager_snapshot.json"
    try:
        return [c["checkpoint_dir_name"] for c in json.loads(snapshot.read_text())["checkpoint_results"]]
    except (OSError, ValueError, KeyError):
        return []


def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tiny_dataset, ray_session, mlflow_with_classifier,
                                                                  tmp_path):
    classifier_run = mlflow_with_classifier
    (tmp_path / "space.yaml").write_text("lr: {grid: [1.0e-3, 5.0e-4]}\nn_critic: 1\nz_dim: 16\n")
    command = [str(Path(sys.executable).parent / "wganctl"), "tune", "--data", tiny_dataset, "--trials", "1",
               "--space", "space.yaml", "--scheduler", "none", "--steps", "90", "--reports", "3", "--width", "8",
               "--batch", "16", "--objective-samples", "200", "--classifier", classifier_run,
               "--experiment", "sweep-killed"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user's would be
    driver = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = MlflowClient()
    storage = tmp_path / "ray_results"
    finished_before: dict[str, int] = {}
    interrupted = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None:
            experiment = client.get_experiment_by_name("sweep-killed")
            runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TRIAL_TAG}` != ''") \
                if experiment else []
            done = [r for r in runs if r.info.status == "FINISHED"]
            running = [r for r in runs if r.info.status == "RUNNING" and _registered_checkpoints(storage, r.info.run_id)]
            if done and running:
                finished_before = {r.info.run_id: r.info.end_time for r in done}
                interrupted = running[0].info.run_id
                break
            time.sleep(0.1)
    finally:
        for pid in _processes_of(driver.pid):  # the driver and the local Ray it started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        driver.wait()
    assert interrupted, "the sweep never had a finished trial and a running one with a checkpoint"
    checkpoint_step = int(_registered_checkpoints(storage, interrupted)[-1].split("_")[-1])

    # `wganctl tune --resume`, here in this process (on this session's Ray, sparing a start-up)
    again = CliRunner().invoke(app, command[1:] + ["--resume"])
    assert again.exit_code == 0, again.output
    assert "2 trials" in again.output

    runs = client.search_runs([client.get_experiment_by_name("sweep-killed").experiment_id],
                              filter_string=f"tags.`{TRIAL_TAG}` != ''")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}  # no trial started twice
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/generator")]
        if run.info.run_id in finished_before:  # not run again
            assert run.info.end_time == finished_before[run.info.run_id]
            assert steps == sorted(set(steps)) and steps[-1] == 90
        assert run.data.tags["wganctl.completed_steps"] == "90"
    resumed = [m.value for m in client.get_metric_history(interrupted, "train/resumed_from_step")]
    assert resumed == [checkpoint_step]  # the running trial restarted from its checkpoint


def test_pbt_restarts_a_weak_trial_from_a_strong_ones_checkpoint_with_its_learning_rate(
        tiny_dataset, ray_session, mlflow_with_classifier, tmp_path):
    classifier_run = mlflow_with_classifier
    space = tmp_path / "space.yaml"
    # Two trials side by side, so PBT is synchronous: at its one perturbation (report 2 of 3)
    # it ranks both and restarts the weaker from the stronger one's checkpoint, whichever
    # reported first.
    space.write_text("lr: {choice: [1.0e-3, 1.0e-9]}\nn_critic: 1\n")
    result = tune_sweep(tiny_dataset, sweep=SweepSettings(trials=2, scheduler="pbt", steps=15, reports=3,
                                                          max_concurrent=2, objective_samples=200, seed=1, space=str(space), classifier=classifier_run, storage_path=str(tmp_path / "ray")), experiment="pbt", base=TrainConfig(width=8, z_dim=16, batch=16))

    client = MlflowClient()
    runs = children(client, result.parent_run_id)
    exploits = [r for r in runs if r.data.tags.get("wganctl.pbt_donor_run")]
    assert exploits, [(r.data.params["lr"], r.info.status) for r in runs]
    by_id = {r.info.run_id: r for r in runs}
    for run in exploits:
        donor = by_id[run.data.tags["wganctl.pbt_donor_run"]]
        assert donor.data.tags[TRIAL_TAG] != run.data.tags[TRIAL_TAG]  # another trial's checkpoint
        # it went on from a step the donor had checkpointed, not from scratch
        start = [m.value for m in client.get_metric_history(run.info.run_id, "train/resumed_from_step")]
        assert len(start) == 1 and start[0] > 0
        assert start[0] in {m.step for m in client.get_metric_history(donor.info.run_id, "objective/frechet_distance")}
        # with its own (perturbed) learning rate in the optimizers, not the donor's saved one
        saved = sorted((tmp_path / "ray" / f"wganctl-{run.info.run_id}").glob("checkpoint_0*"))
        assert saved, "the exploiting run wrote no checkpoint"
        payload = ckpt.load(saved[-1])
        lr = float(run.data.params["lr"])
        assert {g["lr"] for opt in ("g_optimizer", "d_optimizer") for g in payload[opt]["param_groups"]} == {lr}
    # the exploited run is closed and says by whom; the trials table lists each trial's newest run
    replaced = [r for r in runs if r.data.tags.get("wganctl.pbt_exploited")]
    assert replaced and all(r.info.status == "KILLED" for r in replaced)
    assert len(result.trials) == 2 and {row["run_id"] for row in result.trials} <= set(by_id)
    assert result.best_run_id in by_id


def test_pbt_perturbs_about_every_quarter_of_a_trial_but_never_at_its_last_report():
    assert {reports: pbt_interval(reports) for reports in (3, 4, 8, 12, 16)} == {3: 2, 4: 3, 8: 3, 12: 5, 16: 5}
    for reports in range(3, 40):
        assert reports % pbt_interval(reports) != 0


def test_steps_that_do_not_split_into_reports_are_refused_with_multiples_that_do(tiny_dataset, mlflow_store):
    with pytest.raises(UserError, match=r"--steps \(200\) must be a multiple of --reports \(16\), e.g. 192 or 208"):
        tune_sweep(tiny_dataset, sweep=SweepSettings(steps=200, reports=16))


def test_asha_replay_applies_ray_tunes_stop_rule_to_trials_run_one_after_another():
    """benchmarks/replay_asha.py, on histories whose outcome follows from ASHA's rule by hand."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("replay_asha", Path(__file__).parents[1] / "benchmarks" / "replay_asha.py")
    replay_asha = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay_asha)
    trials = [[10.0, 9.0, 8.0, 7.0],  # first at rung 1: nothing to compare with, runs to the end
              [20.0, 1.0, 1.0, 1.0],  # worse than the first at rung 1: stopped there (its later 1.0 never happens)
              [5.0, 4.0, 3.0, 2.0]]   # in the top quarter of {10, 20}: runs to the end
    spent, best, rungs = replay_asha.replay(trials, reports=4, factor=4, grace=1)
    assert (spent, best, rungs) == (9, 2.0, [1])  # report 4 is the end, not a rung


def test_pbt_needs_a_knob_it_can_perturb(tiny_dataset, mlflow_store, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("loss: {choice: [wgan, wgan-gp]}\nlambda_gp: {uniform: [1, 10]}\n")  # lambda exists for one loss
    with pytest.raises(UserError, match="--scheduler pbt needs a range or choice"):
        tune_sweep(tiny_dataset, sweep=SweepSettings(scheduler="pbt", space=str(space)))
    space.write_text("lr: {loguniform: [1.0e-5, 1.0e-3]}\n")
    with pytest.raises(UserError, match="--scheduler pbt needs --reports 3 or more"):
        tune_sweep(tiny_dataset, sweep=SweepSettings(scheduler="pbt", reports=2, steps=10, space=str(space)))
