"""What ASHA saves: the same search space swept with ASHA and run to the end, side by side.

Run from the repository root, with nothing else running:

    .venv/bin/python benchmarks/bench_tune.py --data data/fashion-mnist-28px --classifier RUN_ID \\
        [--trials 32] [--steps 192] [--reports 16] [--full-from PARENT_RUN_ID]

(--full-from: take the full sweep's figures from a finished one of the same settings.)

Both sweeps are real `wganctl tune` sweeps (`pipelines.tune.tune_sweep`) of the default
search space (lambda, c, n_critic, lr, loss around the papers' values) with the same
seed for Tune's sampler, so they draw the same trial configurations; one uses ASHA,
the other no scheduler. Trials are small (width 16, batch 64, --steps generator steps,
the objective at --reports checkpoints) so that a 2-core machine sweeps 32 of them.

Printed, side by side: trial-steps spent (the generator steps each trial ran, summed),
the best objective each sweep found (Frechet distance in the classifier's features,
lower is better), wall-clock time, and the ratios ASHA / full; then Tune's overhead
per trial: a trial's wall time against the training inside it (first to last logged
step of its MLflow run), the rest being Ray Train start-up, checkpoints, the objective
and model logging.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow.tracking import MlflowClient  # noqa: E402

from pipelines import tracking  # noqa: E402
from pipelines.search_space import SweepSettings  # noqa: E402
from pipelines.tune import tune_sweep  # noqa: E402
from wgan.config import TrainConfig  # noqa: E402


def sweep(scheduler: str, args, storage: str) -> dict:
    started = time.perf_counter()
    settings = SweepSettings(trials=args.trials, scheduler=scheduler, steps=args.steps, reports=args.reports,
                             seed=args.seed, classifier=args.classifier, storage_path=storage)
    result = tune_sweep(args.data, sweep=settings, experiment=f"bench-tune-{scheduler}",
                        base=TrainConfig(width=16, batch=64, seed=0))
    return summary(result.trials, time.perf_counter() - started, args)


def finished_sweep(parent_run_id: str, args) -> dict:
    """The figures of a sweep that ran before (its parent run's trials.csv and timestamps)."""
    import csv
    import io

    import mlflow

    client = MlflowClient(tracking.tracking_uri())
    parent = client.get_run(parent_run_id)
    rows = list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{parent_run_id}/trials.csv"))))
    for row in rows:
        row["reports"] = int(row["reports"])
    wall = (parent.info.end_time - parent.info.start_time) / 1000
    return summary(rows, wall, args)


def summary(trials: list[dict], wall: float, args) -> dict:
    client = MlflowClient(tracking.tracking_uri())
    interval = args.steps // args.reports
    trial_steps = sum(row["reports"] * interval for row in trials)
    overheads, trainings = [], []
    for row in trials:
        if not row["run_id"]:
            continue
        run = client.get_run(row["run_id"])
        history = client.get_metric_history(row["run_id"], "loss/generator")
        if run.info.end_time and len(history) > 1:
            training = (max(m.timestamp for m in history) - min(m.timestamp for m in history)) / 1000
            trainings.append(training)
            overheads.append((run.info.end_time - run.info.start_time) / 1000 - training)
    objectives = [float(row["objective"]) for row in trials if row["objective"] not in (None, "")]
    objectives = [value for value in objectives if math.isfinite(value)]
    return {"wall": wall, "trial_steps": trial_steps, "best": min(objectives), "trials": len(trials),
            "stopped": sum(row["status"] == "stopped early" for row in trials),
            "errors": sum(row["status"] == "error" for row in trials),
            "overhead": statistics.median(overheads) if overheads else float("nan"),
            "training": statistics.median(trainings) if trainings else float("nan"),
            "per_trial_wall": wall / max(1, len(trials))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a prepared, labelled dataset")
    parser.add_argument("--classifier", required=True, help="MLflow run id of `wganctl train-classifier` on it")
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--steps", type=int, default=192,
                        help="generator steps per trial, at most (a multiple of --reports)")
    parser.add_argument("--reports", type=int, default=16,
                        help="objective evaluations per trial (ASHA's rungs count these; 16 as `wganctl tune`)")
    parser.add_argument("--seed", type=int, default=0, help="seed of Tune's sampler: both sweeps draw the same trials")
    parser.add_argument("--full-from", default=None, metavar="RUN_ID",
                        help="take the full sweep's figures from this finished sweep (parent run) of the same "
                             "settings instead of running it again")
    args = parser.parse_args()

    storage = tempfile.mkdtemp(prefix="bench-tune-")
    full = finished_sweep(args.full_from, args) if args.full_from else sweep("none", args, storage)
    asha = sweep("asha", args, storage)
    print(f"\n{args.trials} trials, {args.steps} steps each at most, objective every {args.steps // args.reports} steps "
          f"(storage {storage}, tracking {tracking.tracking_uri()})")
    print(f"{'':<22} {'full':>10} {'ASHA':>10} {'ASHA/full':>10}")
    for key, label in (("trial_steps", "trial-steps"), ("wall", "wall-clock s"), ("best", "best objective (FD)")):
        print(f"{label:<22} {full[key]:>10.4g} {asha[key]:>10.4g} {asha[key] / full[key]:>10.3f}")
    print(f"{'stopped early':<22} {full['stopped']:>10} {asha['stopped']:>10}")
    print(f"{'errored (diverged)':<22} {full['errors']:>10} {asha['errors']:>10}")
    print("targets: ASHA trial-steps <= 0.30 x full; ASHA best within 10% of full (ratio <= 1.10)")
    print(f"\nper trial (medians, full sweep): training {full['training']:.1f} s, run overhead "
          f"(Ray Train start-up, checkpoints, objective, model logging) {full['overhead']:.1f} s, "
          f"sweep wall / trials {full['per_trial_wall']:.1f} s")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    main()
