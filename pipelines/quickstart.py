"""The main job: offline Fashion-MNIST -> a GAN on Ray Train -> MLflow, on a laptop-sized CPU.

Its settings are the ones that gave the best samples a 2-core CPU makes in the job's time,
measured with `benchmarks/bench_quality.py` (Frechet distance to the train split in the
project classifier's features after equal training time, lower is better; every figure and
command is in benchmarks/RESULTS-issue19.md, sections 2, 2b and 2c):

* **Loss and critic: SN-GAN's hinge loss with a spectrally normalised critic** (Lim and Ye
  2017; Miyato et al. 2018), not WGAN-GP. Without the gradient penalty's second backward pass,
  and with one critic step per generator step, a step costs 0.027 CPU-s of one core against
  WGAN-GP's 0.072 (n_critic 2), so the same time holds ~2.4x the steps. `wganctl train`'s
  defaults stay the WGAN-GP paper's (Gulrajani et al. 2017).
* **n_critic 1, Adam lr 8e-4, betas (0, 0.9)** (the betas of both the WGAN-GP paper and the
  SN-GAN code), batch 64, a DCGAN of width 32 at 28 px. At 150 CPU-s of one core:
  hinge n_critic 1 lr 4e-4: 9.23 | 6e-4: 6.71 | 8e-4: 6.48 | batch 32: 10.02 | batch 128: 12.86
  | width 48: 13.44 | betas (0.5, 0.9): 10.79 | SN-GAN's setting C (lr 2e-4, (0.5, 0.999)):
  18.33 | n_critic 2: 10.62 | against the old settings (WGAN-GP, n_critic 2, lr 4e-4): 13.73,
  and WGAN-GP with n_critic 1: 11.58.
* **A generator EMA of decay 0.999** (Karras et al. 2018), which samples and is logged.
* **No lr decay**: a linear decay to 0 lost at every length measured (1.99x at 1,000 steps,
  1.37x at 6,400) while the generator is still improving fast.

At 700 CPU-s of one core (the issue's 10-minute budget), in one run:

    old settings (WGAN-GP, n_critic 2, lr 4e-4), 8,629 steps: 4.721
    | these settings, 21,874 steps: 2.229 (0.47x)

(and in another pair of runs, hinge n_critic 1 lr 8e-4 without the EMA: 2.915 against 4.882, 0.60x)

    .venv/bin/python benchmarks/bench_quality.py --data DATA_28PX --classifier RUN --budget 700 \
        --snapshots 350 --configs 'today=steps:1500,best=loss:hinge;n_critic:1;lr:0.0008;g_ema:0.999'

The length is what the 12-minute limit of `scripts/setup && wganctl quickstart` on a fresh
2-core machine leaves room for (timed beside MAIN_JOB).
"""

from __future__ import annotations

import dataclasses

import typer

from wgan.config import RunSettings, TrainConfig
from pipelines import tracking
from pipelines.prepare import prepare
from pipelines.train import train

DATA_DIR = "data/fashion-mnist-28px-train"
# Timed from a fresh clone (2026-12-02, quiet 2-core bf16 CPU, pip cache warm): 424 s in all, 113 s install,
# 311 s quickstart (prepare + 10000 steps at 2200-2500 img/s). Without bf16 (~1.46x slower steps) and a
# 4-minute install: about 4 + 0.5 + 4.7 x 1.46 = 11.4 min, estimated.
MAIN_JOB = TrainConfig(loss="hinge", arch="dcgan", width=32, steps=10000, batch=64, n_critic=1, lr=8e-4,
                       betas=(0.0, 0.9), g_ema=0.999)
MAIN_JOB_RUN = RunSettings(log_every=25, sample_every=500, checkpoint_every=500)


def quickstart(steps: int | None = None, progress: bool = True):
    # What train would refuse, refused before prepare starts Ray and reads 60,000 images.
    if steps is not None:
        dataclasses.replace(MAIN_JOB, steps=steps, image_size=28, channels=1).resolved()
    tracking.check_reachable()
    prepared = prepare("fashion-mnist", size=28, splits=["train"], out=DATA_DIR, progress=progress)
    typer.echo(f"data: {prepared.manifest['count']} images in {prepared.out}")
    result = train(MAIN_JOB, prepared.out, run=MAIN_JOB_RUN, experiment="wganctl-quickstart", progress=progress,
                   steps=steps)
    grid_path = result.final_grid.removeprefix("file://")
    typer.echo("")
    typer.echo(f"MLflow run:   {result.run_id}  ({result.tracking_uri})")
    typer.echo(f"final grid:   {grid_path}")
    typer.echo(f"more samples: wganctl sample {result.run_id} --n 64 --out samples.png")
    for line in tracking.ui_hint(result.run_id):
        typer.echo(line)
    return result
