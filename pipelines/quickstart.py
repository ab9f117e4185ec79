"""The main job: offline Fashion-MNIST -> WGAN-GP on Ray Train -> MLflow, on a laptop-sized CPU.

The loss is the paper's WGAN-GP (Gulrajani et al. 2017: gradient penalty, lambda 10,
Adam betas (0, 0.9), batch 64, layer-norm critic) on a narrower DCGAN (width 32) at
28 px. Learning rate and n_critic are chosen by measurement for the best samples a
2-core CPU makes in the job's budget (`benchmarks/bench_quality.py`, Frechet distance in
the project classifier's features after equal wall-clock training, lower is better):

    100 s: lr 1e-4 n_critic 5: 120.3 | lr 2e-4: 95.2 | lr 4e-4: 81.6 | width 16 lr 2e-4: 92.3
           | n_critic 2 lr 2e-4: 74.9 | lr 1e-4 + generator EMA 0.995: 226.7
    200 s: n_critic 2 lr 2e-4: 59.5 | + EMA 0.99: 62.7 | n_critic 2 lr 4e-4: 36.6

So n_critic 2 and lr 4e-4 (the paper's 5 and 1e-4 need several times the budget), and
no EMA (it lags behind a generator that is still improving fast).

Chosen again for issue 19 (benchmarks/RESULTS-issue19.md), at an equal budget of 150 CPU-seconds
of one core (torch on 1 thread, avx512_bf16/amx_bf16 CPU, bf16 autocast), 28 px, FD to the train
split in the project classifier's features (1-epoch classifier, run 143300fd...):

    lr 4e-4 constant (1052 steps): 24.58 | lr 4e-4 linear decay to 0 at 1000 steps: 48.98
    | lr 6e-4 linear decay at 1000 steps: 33.76

    .venv/bin/python benchmarks/bench_quality.py --data DATA_28PX --classifier RUN --budget 150 \
        --configs 'main,main-linear=lr_decay:linear;steps:1000,lr6e-4-linear=lr:0.0006;lr_decay:linear;steps:1000'

So no lr decay (halving the mean lr costs more than the annealing gains at this length). At 700
CPU-seconds (~6,900 steps; section 2b of the results file), the same command with
``--budget 700 --snapshots 350``:

    today's settings: 8.61 at 3,320 steps, 5.85 at 6,965 | + generator EMA 0.999: 11.59, 5.77
    | + linear decay to 0 at 6,400 steps: 9.62, 8.03

So the settings stay, and the length is what pays (0.68x from 3,320 to 6,965 steps): 4500 steps,
what the 12-minute limit of `scripts/setup && wganctl quickstart` on a fresh 2-core machine
leaves room for. Timed from a fresh clone (2026-12-02, quiet machine, pip cache warm, bf16 CPU):
2500 steps took 274 s in all, 163 s of them the train run; 4500 steps took 401 s (6.7 min) in all:
106 s install, 18 s prepare, 277 s the train run (0.062 s a step with its logging). An AVX2-only
CPU (no bf16: ~1.46x slower steps) with a 4-minute install stays within 12 minutes by that rate
(4 + 0.5 + 4500 x 0.062 x 1.46 / 60 = 11.3 min), not measured.
"""

from __future__ import annotations

import dataclasses

import typer

from wgan.config import RunSettings, TrainConfig
from pipelines import tracking
from pipelines.prepare import prepare
from pipelines.train import train

DATA_DIR = "data/fashion-mnist-28px-train"
MAIN_JOB = TrainConfig(loss="wgan-gp", arch="dcgan", width=32, steps=4500, batch=64, n_critic=2, lr=4e-4)
MAIN_JOB_RUN = RunSettings(log_every=25, sample_every=250, checkpoint_every=250)


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
