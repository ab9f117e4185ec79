"""What ASHA would have spent and found on a finished full sweep, for several reduction factors.

Run from the repository root after `benchmarks/bench_tune.py` (or any `wganctl tune
--scheduler none` sweep):

    .venv/bin/python benchmarks/replay_asha.py PARENT_RUN_ID [--factors 3,4,6,8] [--grace 1,2]

It replays Ray Tune's own ASHA bracket (`ray.tune.schedulers.async_hyperband._Bracket`,
the stop rule `ASHAScheduler` applies) on the objective history that every trial of
the full sweep logged, trials in the order they started and one at a time, as a
sweep on this 2-core machine runs them. A trial stopped at report r has spent r
reports and scores the best objective it reported up to r (as the sweep's trials.csv). This assumes a trial's objective does not
depend on the scheduler (same seed, same data order), which holds up to CPU
nondeterminism. A replay is a prediction: `bench_tune.py` measures a real ASHA sweep.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow.tracking import MlflowClient  # noqa: E402
from ray.tune.schedulers.async_hyperband import _Bracket  # noqa: E402

from pipelines import tracking  # noqa: E402
from pipelines.objective import METRIC  # noqa: E402


def histories(parent_run_id: str) -> list[list[float]]:
    """Each child run's objective values by report, children in start order."""
    client = MlflowClient(tracking.tracking_uri())
    experiment = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=10000)
    runs.sort(key=lambda run: run.info.start_time)
    return [[m.value for m in sorted(client.get_metric_history(run.info.run_id, METRIC), key=lambda m: m.step)]
            for run in runs]


def replay(trials: list[list[float]], reports: int, factor: int, grace: int) -> tuple[int, float, list[int]]:
    """(reports spent, best objective found, rungs) of ASHA over ``trials`` run one after another."""
    bracket = _Bracket(grace, reports, factor, 0)
    spent, best = 0, math.inf
    for index, values in enumerate(trials):
        trial = SimpleNamespace(trial_id=str(index))  # all the bracket reads of a trial
        for report, value in enumerate(values[:reports], start=1):
            spent += 1
            if math.isfinite(value):
                best = min(best, value)
            if report >= reports or bracket.on_result(trial, report, -value) == "STOP":  # mode min
                break
    return spent, best, sorted(milestone for milestone, _ in bracket._rungs if milestone < reports)  # max_t ends a trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parent_run_id", help="the full sweep's MLflow parent run")
    parser.add_argument("--factors", default="3,4,6,8", help="reduction factors to replay")
    parser.add_argument("--grace", default="1,2", help="grace periods (reports) to replay")
    args = parser.parse_args()

    trials = histories(args.parent_run_id)
    reports = max(len(values) for values in trials)
    full_spent = sum(len(values) for values in trials)
    full_best = min(value for values in trials for value in values if math.isfinite(value))
    print(f"{len(trials)} trials, {reports} reports each at most; full sweep: {full_spent} reports, best {full_best:.1f}")
    print(f"{'factor':>6} {'grace':>5}  {'rungs':<12} {'spent / full':>12} {'best / full best':>16}")
    for factor in (int(f) for f in args.factors.split(",")):
        for grace in (int(g) for g in args.grace.split(",")):
            spent, best, rungs = replay(trials, reports, factor, grace)
            print(f"{factor:>6} {grace:>5}  {str(rungs):<12} {spent / full_spent:>12.3f} {best / full_best:>16.3f}")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    main()
