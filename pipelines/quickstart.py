"""The main job: offline Fashion-MNIST -> WGAN-GP on Ray Train -> MLflow, on a laptop-sized CPU.

Settings are the paper's WGAN-GP (Adam 1e-4, betas (0, 0.9), lambda 10,
n_critic 5, batch 64) on a narrower DCGAN (width 32) at 28 px, for a number of
steps that fits a 2-core CPU in about ten minutes.
"""

from __future__ import annotations

import typer

from wgan.config import TrainConfig
from pipelines import tracking
from pipelines.prepare import prepare
from pipelines.train import train

DATA_DIR = "data/fashion-mnist-28px-train"
MAIN_JOB = TrainConfig(loss="wgan-gp", arch="dcgan", width=32, steps=600, batch=64,
                       log_every=10, sample_every=100, checkpoint_every=100)


def quickstart(steps: int | None = None, progress: bool = True):
    prepared = prepare("fashion-mnist", size=28, splits=["train"], out=DATA_DIR, progress=progress)
    typer.echo(f"data: {prepared.manifest['count']} images in {prepared.out}")
    result = train(MAIN_JOB, prepared.out, experiment="wganctl-quickstart", progress=progress, steps=steps)
    grid_path = result.final_grid.removeprefix("file://")
    typer.echo("")
    typer.echo(f"MLflow run:   {result.run_id}  ({result.tracking_uri})")
    typer.echo(f"final grid:   {grid_path}")
    typer.echo(f"more samples: wganctl sample {result.run_id} --n 64 --out samples.png")
    typer.echo(f"browse runs:  mlflow ui --backend-store-uri {tracking.tracking_uri()}  -> http://127.0.0.1:5000")
    return result
