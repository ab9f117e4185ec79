"""The main job: offline Fashion-MNIST -> a Wasserstein GAN on Ray Train -> MLflow, on a laptop-sized CPU.

Its settings are the Wasserstein GAN that gave the best samples a 2-core CPU makes in the
job's time, measured with `benchmarks/bench_quality.py` (Frechet distance, FD, to the train
split in the project classifier's features after equal CPU time, lower is better; every
figure and command is in benchmarks/RESULTS-issue29.md, and the earlier ones in
RESULTS-issue19.md, sections 2, 2b and 2c):

* **WGAN-GP** (Gulrajani et al. 2017) **with a lazy penalty, `--gp-every 8`**: the penalty,
  its interpolates' forward and its double backward on every 8th critic update only,
  weighted lambda * 8 (the lazy regularisation of Karras et al. 2020, sec. 3.1, applied to
  the WGAN-GP penalty). The double backward was what made WGAN-GP cost more per step than
  the hinge loss; paid on one update in 8, a step costs slightly less than a hinge step
  with its spectral norm (16,165 steps against 15,299 in the same 700 CPU-s).
* **n_critic 1, Adam lr 8e-4, betas (0, 0.9)** (the WGAN-GP paper's betas), lambda 10 (the
  paper's), batch 64, a DCGAN of width 32 with a layer-normalised critic at 28 px. The
  learning rate, batch and width are the ones the hinge search of RESULTS-issue19.md
  section 2c chose (lr 4e-4: 9.23, 6e-4: 6.71, 8e-4: 6.48; batch 32: 10.02, 128: 12.86;
  width 48: 13.44, at 150 CPU-s).
* **A generator EMA of decay 0.999** (Karras et al. 2018), which samples and is logged.
* **No lr decay**: a linear decay to 0 lost at every length measured (1.99x at 1,000 steps,
  1.37x at 6,400) while the generator is still improving fast.

At 150 CPU-s of one core, against the hinge main job this replaced (SN-GAN's hinge loss,
spectrally normalised critic, the same lr, batch, width and EMA): FD 14.103 against 15.090
(0.93x) with `--gp-every 8`; 0.96x at K = 4, 0.97x at K = 16, 1.32x with the penalty on
every update; a penalty-free Wasserstein critic (spectral norm, Adam) 0.96x at lr 8e-4.
At 700 CPU-s (the job's budget), side by side in one run:

    hinge main job, 15,299 steps: FD 6.000 | this job, 16,165 steps: FD 5.143 (0.86x)

    .venv/bin/python benchmarks/bench_quality.py --data DATA_28PX --classifier RUN --budget 700 \
        --configs "main,gp8=n_critic:1;lr:8e-4;g_ema:0.999;gp_every:8"

**It ends measured** (issue 30). It prepares the train and test splits, trains the project
classifier when the store has none for the dataset (its own run, CLASSIFIER_EPOCHS = 2 of
`train-classifier`'s defaults), and trains with `--eval-every 1000`: an FD curve of 2,000
samples in that classifier's features, and the best checkpoint kept by Ray Train. Measured
for the classifier on a quiet 2-core machine (avx512_bf16, amx_bf16), the whole
`train-classifier` call on fashion-mnist-28px: 1 epoch 38.2 s (test accuracy 0.880, FD floor
0.035) | 2 epochs 42.9 s (0.899, 0.040) | 4 epochs, its default, 69.6 s (0.910, 0.050). Two
epochs keep most of the accuracy for 27 s less. FDs measured in different classifiers'
features are not comparable: the figures above are in a 4-epoch classifier's.

The hinge loss stays an option of `wganctl train` (`--loss hinge`). The length is what the
12-minute limit of `scripts/setup && wganctl quickstart` on a fresh 2-core machine leaves
room for (timed beside MAIN_JOB).
"""

from __future__ import annotations

import dataclasses

import typer

from wgan.config import RunSettings, TrainConfig
from wgan.errors import UserError
from pipelines import tracking
from pipelines.prepare import prepare
from pipelines.train import fd_lines, train
from pipelines.stage_options import ClassifierOptions, PrepareOptions

DATA_DIR = "data/fashion-mnist-28px"  # train and test splits: the classifier measures its FD floor on the test split
# Timed from a fresh clone (2026-12-08, 2-core machine with avx512_bf16/amx_bf16, warm pip cache): 696 s in all,
# 124 s install, 572 s quickstart (prepare, a 2-epoch classifier, 10000 steps with ten evaluations). Before the
# classifier and the evaluations (2026-12-07, empty pip cache): 535 s in
# all, 136 s install, 399 s quickstart (prepare + 10000 steps at 1350-2200 img/s).
MAIN_JOB = TrainConfig(loss="wgan-gp", gp_every=8, arch="dcgan", width=32, steps=10000, batch=64, n_critic=1,
                       lr=8e-4, betas=(0.0, 0.9), g_ema=0.999)
# --eval-every 1000: ten points of the FD curve in the job; each scores 2,000 samples (eval/seconds in the run)
MAIN_JOB_RUN = RunSettings(log_every=25, sample_every=500, checkpoint_every=500, eval_every=1000)
# The project classifier, when the store has none for the dataset: CLASSIFIER_EPOCHS of train-classifier's
# defaults (see the module docstring for what fewer epochs cost).
CLASSIFIER_EPOCHS = 2
EXPERIMENT = "wganctl-quickstart"


def quickstart(steps: int | None = None, progress: bool = True):
    """Prepare Fashion-MNIST (train and test splits), train the project classifier if there is none,
    train MAIN_JOB with its FD curve, and print where everything is: the run ends measured, and
    `wganctl evaluate RUN` works after it with no other command."""
    # What train would refuse, refused before prepare starts Ray and reads 70,000 images.
    job = MAIN_JOB if steps is None else dataclasses.replace(MAIN_JOB, steps=steps)
    dataclasses.replace(job, image_size=28, channels=1).resolved()
    tracking.check_reachable()
    prepared = prepare("fashion-mnist", options=PrepareOptions(size=28, splits=["train", "test"]), out=DATA_DIR,
                       progress=progress)
    typer.echo(f"data: {prepared.manifest['count']} images in {prepared.out}")
    classifier_run = _classifier(prepared.out, prepared.manifest, progress)
    run = dataclasses.replace(MAIN_JOB_RUN, classifier=classifier_run)
    result = train(job, prepared.out, run=run, experiment=EXPERIMENT, progress=progress)
    grid_path = result.final_grid.removeprefix("file://")
    typer.echo("")
    typer.echo(f"MLflow run:   {result.run_id}  ({result.tracking_uri})")
    typer.echo(f"final grid:   {grid_path}")
    for line in fd_lines(result):
        typer.echo(line)
    typer.echo(f"more samples: wganctl sample {result.run_id} --n 64 --out samples.png")
    typer.echo(f"measure it:   wganctl evaluate {result.run_id}")
    for line in tracking.ui_hint(result.run_id):
        typer.echo(line)
    return result


def _classifier(data_dir: str, manifest: dict, progress: bool) -> str:
    """The newest project classifier for the dataset, trained here (its own MLflow run) when there is none."""
    from pipelines.classifier import find_classifier, train_classifier

    try:
        return find_classifier(tracking.client(), manifest)
    except UserError:
        pass
    typer.echo(f"classifier: none for {manifest['dataset']} at {manifest['size']} px yet; training one "
               f"({CLASSIFIER_EPOCHS} epochs), whose features measure the samples")
    result = train_classifier(data_dir, ClassifierOptions(epochs=CLASSIFIER_EPOCHS), experiment=EXPERIMENT,
                              progress=progress)
    typer.echo(f"classifier run {result.run_id}: test accuracy {result.test_accuracy:.4f}; "
               f"FD(test, train) floor {result.fd_test_vs_train:.4g}")
    return result.run_id
