"""What `train --eval-every` costs: the main job with and without its evaluations, side by side in one run.

Run from the repository root, on a prepared Fashion-MNIST at 28 px and its classifier:

    .venv/bin/python benchmarks/bench_eval_overhead.py --data data/fashion-mnist-28px --classifier RUN \\
        [--steps 3000] [--rounds 1]

Each round trains `pipelines.quickstart.MAIN_JOB` for --steps through the real train stage (local
Ray, one worker, MLflow in a temporary sqlite store), once as the quickstart runs it
(`MAIN_JOB_RUN`: an evaluation of 2,000 samples every 1,000 steps and at the last) and once with
no evaluations, the order alternated per round. It prints each arm's wall time (the whole
`train()` call: Ray Train start, steps, checkpoints, logging), the ratio, and the evaluations'
own time (the sum of the run's `eval/seconds`) as a share of the evaluated run. The issue's
target: at most 5% of the run's wall time (issue 30).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="prepared Fashion-MNIST at 28 px (wganctl prepare)")
    parser.add_argument("--classifier", required=True, help="its classifier run, in MLFLOW_TRACKING_URI's store")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.quickstart import MAIN_JOB, MAIN_JOB_RUN
    from pipelines.train import train

    store = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()  # where the classifier is
    os.environ["MLFLOW_TRACKING_URI"] = store
    results: dict[str, list[float]] = {"evaluated": [], "plain": []}
    shares = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            arms = ["evaluated", "plain"] if round_ % 2 == 0 else ["plain", "evaluated"]
            for arm in arms:
                settings = dataclasses.replace(MAIN_JOB_RUN, classifier=args.classifier,
                                               eval_every=MAIN_JOB_RUN.eval_every if arm == "evaluated" else 0,
                                               storage_path=str(Path(scratch, f"{arm}-{round_}")))
                started = time.perf_counter()
                result = train(MAIN_JOB, args.data, run=settings, experiment="bench-eval-overhead", progress=False,
                               steps=args.steps)
                wall = time.perf_counter() - started
                results[arm].append(wall)
                line = f"round {round_} {arm:9s}: {wall:7.1f} s"
                if arm == "evaluated":
                    seconds = [m.value for m in MlflowClient().get_metric_history(result.run_id, "eval/seconds")]
                    shares.append(sum(seconds) / wall)
                    line += (f"  ({len(seconds)} evaluations, {sum(seconds):.1f} s: {100 * shares[-1]:.2f}% of the "
                             f"run; final FD {result.final_fd:.3f}, best {result.best_fd:.3f} at {result.best_step})")
                print(line, flush=True)
    evaluated, plain = sum(results["evaluated"]), sum(results["plain"])
    print(f"\n{args.steps} steps, {args.rounds} round(s): evaluated {evaluated:.1f} s, plain {plain:.1f} s, "
          f"ratio {evaluated / plain:.3f}; the evaluations' own time {100 * sum(shares) / len(shares):.2f}% of the "
          f"evaluated run (target: at most 5%)")


if __name__ == "__main__":
    main()
