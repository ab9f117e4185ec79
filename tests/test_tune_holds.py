"""A sweep never hangs on what its stopped trials held (issue 34), and a trial that cannot get its
workers fails in one line while the sweep goes on.

The race: Ray Train removes an early-stopped trial's placement group only once Ray's state API
(the dashboard) reports its controller dead. Here the sweep runs on a local Ray started without
a dashboard, so Ray's own cleaner never does: on 2 CPUs, two stopped trials' groups (0.99 CPU
each) would then hold every CPU and the fourth trial would wait forever.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group

from pipelines.search_space import SweepSettings
from pipelines.tune import tune_sweep
from wgan.config import TrainConfig

SWEEP_TIMEOUT_S = 420  # about 2 min on a quiet 2-core machine; a hang never ends

SWEEP = textwrap.dedent("""
    import json, sys
    import ray
    from pipelines.cluster.connect import use_local_ray_env
    from pipelines.cluster.holds import held_groups
    from pipelines.search_space import SweepSettings
    from pipelines.tune import tune_sweep
    from wgan.config import TrainConfig

    data, classifier, space, storage = sys.argv[1:]
    use_local_ray_env()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # Ray Train's cleaner is blind here
    result = tune_sweep(data, sweep=SweepSettings(trials=1, scheduler="asha", steps=48, reports=2,
                                                  objective_samples=200, wait_for_workers=3600, space=space,
                                                  classifier=classifier, storage_path=storage),
                        experiment="holds", base=TrainConfig(width=8, z_dim=16, batch=16))
    print(json.dumps({"trials": [[row["run_id"], row["status"]] for row in result.trials], "held": held_groups()}))
""")


def test_stopped_trials_give_their_cpus_back_without_the_state_api(tiny_dataset, mlflow_with_classifier, tmp_path):
    space = tmp_path / "space.yaml"
    # ASHA's one rung (report 1 of 2): the learner passes, the two barely-moving trials lose and
    # are stopped, and the last learner needs the CPUs they held.
    space.write_text("lr: {grid: [1.0e-3, 1.0e-9, 1.0e-9, 1.0e-3]}\nn_critic: 1\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    sweep = subprocess.Popen([sys.executable, "-c", SWEEP, tiny_dataset, mlflow_with_classifier, str(space),
                              str(tmp_path / "ray")], cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = sweep.communicate(timeout=SWEEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.communicate()
        pytest.fail(f"the sweep hung for {SWEEP_TIMEOUT_S} s: an early-stopped trial's placement group was "
                    f"never released (pipelines.cluster.holds)")
    finally:
        try:
            os.killpg(sweep.pid, signal.SIGKILL)  # the sweep's own local Ray
        except ProcessLookupError:
            pass
    assert sweep.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    statuses = sorted(status for _, status in summary["trials"])
    assert statuses == ["finished", "finished", "stopped early", "stopped early"], summary["trials"]
    assert summary["held"] == [], summary["held"]  # nothing left reserved, seen by the sweep's own job
    for run_id, status in summary["trials"]:
        saved = sorted(p.name for p in (tmp_path / "ray" / f"wganctl-{run_id}").glob("checkpoint_0*"))
        # a stopped trial's run stops with it, at its rung (step 24 of 48): it does not train on unseen
        assert saved[-1] == ("checkpoint_0000048" if status == "finished" else "checkpoint_0000024"), (status, saved)


def test_a_trial_whose_cpus_are_held_fails_in_one_line_naming_them_and_the_sweep_ends(
        tiny_dataset, ray_session, mlflow_with_classifier, tmp_path):
    from pipelines.classifier import load_classifier
    from pipelines.cluster.reference import reference_statistics

    # The objective's reference features, cached beside the data before the CPUs are taken (their
    # embedding is the sweep's own work, before any trial).
    reference_statistics(tiny_dataset, load_classifier(mlflow_with_classifier), mlflow_with_classifier)
    hog = placement_group([{"CPU": 1.5}], name="test-hog")  # what a user's other job would hold
    ray.get(hog.ready(), timeout=30)
    space = tmp_path / "space.yaml"
    space.write_text("lr: {grid: [1.0e-3]}\nn_critic: 1\n")
    try:
        result = tune_sweep(tiny_dataset, sweep=SweepSettings(trials=1, scheduler="asha", steps=4, reports=1,
                                                              objective_samples=200, wait_for_workers=1, space=str(space), classifier=mlflow_with_classifier, storage_path=str(tmp_path / "ray")), experiment="held", base=TrainConfig(width=8, z_dim=16, batch=16))
    finally:
        remove_placement_group(hog)
    assert [row["status"] for row in result.trials] == ["error"], result.trials
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(result.trials[0]["run_id"])
    reason = run.data.tags["wganctl.failure_reason"]
    assert run.info.status == "FAILED" and "\n" not in reason
    assert "could not be placed within 1 s" in reason and "test-hog holds 1.5 CPU" in reason, reason


def test_a_train_run_whose_cpus_are_held_says_what_holds_them_then_fails_in_one_line(
        tiny_dataset, ray_session, mlflow_store, tmp_path, capsys):
    from pipelines.train import TrainingFailed, train
    from wgan.config import RunSettings

    hog = placement_group([{"CPU": 1.5}], name="test-hog")
    ray.get(hog.ready(), timeout=30)
    try:
        with pytest.raises(TrainingFailed) as failed:
            train(TrainConfig(steps=2, width=8, z_dim=16, batch=16), tiny_dataset,
                  run=RunSettings(wait_for_workers=20, storage_path=str(tmp_path / "ray")))
    finally:
        remove_placement_group(hog)
    message = str(failed.value)
    assert "\n" not in message and "could not be placed within 20 s" in message and "test-hog holds 1.5 CPU" in message
    # while it waited, the console said so (once per Ray Train retry: 15 s on a local Ray)
    waited = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train: waiting")]
    assert waited and "test-hog holds 1.5 CPU" in waited[0], waited
