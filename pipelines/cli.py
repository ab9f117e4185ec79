"""The `wganctl` command line: a thin Typer layer over the stage functions.

Each command parses its options, calls one function of `pipelines.*`, and turns a
`wgan.errors.UserError` into a one-line message and exit code 2.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from wgan.errors import UserError

app = typer.Typer(
    name="wganctl",
    help="Train, sweep and compare Wasserstein GANs on Ray, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Train, sweep and compare Wasserstein GANs on Ray, tracked in MLflow."""
    # MLflow announces creating its sqlite tables on stderr; errors must stay one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def user_errors_exit_2(fn):
    """Report bad input as one line on stderr and exit 2, never a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2)

    return wrapper


@app.command()
@user_errors_exit_2
def prepare(
    dataset: str = typer.Argument(..., help="fashion-mnist, mnist, cifar10, stl10, or imagefolder"),
    path: Optional[str] = typer.Argument(None, help="the image folder (with DATASET=imagefolder)"),
    size: int = typer.Option(32, "--size", help="output side length in pixels (antialiased resize)"),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 or 3 (default: the dataset's own)"),
    split: Optional[List[str]] = typer.Option(None, "--split", help="source split(s) to include; repeatable"),
    limit: Optional[int] = typer.Option(None, "--limit", help="keep a random subset of N images"),
    seed: int = typer.Option(0, "--seed", help="seed of the --limit subset"),
    source_dir: Optional[str] = typer.Option(None, "--source-dir", help="read a local copy of the dataset from here"),
    out: Optional[str] = typer.Option(None, "--out", help="output directory (default data/<dataset>-<size>px)"),
    force: bool = typer.Option(False, "--force", help="rebuild even if an identical dataset exists"),
    strict: bool = typer.Option(False, "--strict", help="fail on a corrupt image instead of skipping it"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Read an image dataset, resize it, and write parquet shards plus manifest.json."""
    from pipelines.prepare import prepare as run_prepare

    result = run_prepare(
        dataset,
        path=path,
        size=size,
        channels=channels,
        splits=split or None,
        limit=limit,
        seed=seed,
        source_dir=source_dir,
        out=out,
        force=force,
        strict=strict,
        progress=not quiet,
    )
    if result.up_to_date:
        typer.echo(f"{result.out} is up to date ({result.manifest['count']} images); use --force to rebuild it")
        return
    skipped = result.manifest["skipped"]["count"]
    note = f" (skipped {skipped} unreadable files, listed in manifest.json)" if skipped else ""
    typer.echo(f"prepared {result.manifest['count']} images -> {result.out}{note}")


BATCH_HELP = ("global batch of real images per critic step; each of the --workers workers takes "
              "batch/workers of it, and DDP averages their gradients, so a step equals one step at the "
              "global batch (must divide evenly)")


def _train_config(config_file: Optional[Path], **given) -> "TrainConfig":
    """Config file values, overridden by the options given on the command line."""
    import yaml

    from wgan.config import ConfigError, TrainConfig

    values: dict = {}
    if config_file is not None:
        if not config_file.is_file():
            raise UserError(f"config file {config_file} does not exist")
        try:
            values = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"config file {config_file} is not valid YAML/JSON: {str(err).splitlines()[0]}")
        if not isinstance(values, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping of option names to values")
    values.update({k: v for k, v in given.items() if v is not None})
    return TrainConfig.from_dict(values)


@app.command()
@user_errors_exit_2
def train(
    data: Optional[str] = typer.Option(None, "--data", help="prepared dataset directory (from `wganctl prepare`)"),
    loss: Optional[str] = typer.Option(None, "--loss", help="wgan-gp (default), wgan or gan"),
    arch: Optional[str] = typer.Option(None, "--arch", help="generator: dcgan (default) or mlp"),
    width: Optional[int] = typer.Option(None, "--width", help="base channel width of the DCGAN networks (64)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="generator steps (2000)"),
    batch: Optional[int] = typer.Option(None, "--batch", help=BATCH_HELP + " (64)"),
    n_critic: Optional[int] = typer.Option(None, "--n-critic", help="critic steps per generator step (paper: 5; gan: 1)"),
    lr: Optional[float] = typer.Option(None, "--lr", help="learning rate (paper: wgan 5e-5, wgan-gp 1e-4, gan 2e-4)"),
    lambda_gp: Optional[float] = typer.Option(None, "--lambda-gp", help="gradient penalty weight (wgan-gp; paper: 10)"),
    clip: Optional[float] = typer.Option(None, "--clip", help="critic weight clip c (wgan; paper: 0.01)"),
    critic_norm: Optional[str] = typer.Option(None, "--critic-norm", help="none, layer or batch (batch refused with wgan-gp)"),
    z_dim: Optional[int] = typer.Option(None, "--z-dim", help="latent size (128)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="data-parallel Ray Train workers (1)"),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="one GPU per worker"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (0)"),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="steps between metric flushes (25)"),
    sample_every: Optional[int] = typer.Option(None, "--sample-every", help="steps between sample grids (250)"),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="steps between checkpoints (250)"),
    experiment: str = typer.Option("wganctl", "--experiment", help="MLflow experiment"),
    resume: Optional[str] = typer.Option(None, "--resume", help="MLflow run id to continue (same run, same step count)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of train options (options given here win)"),
    storage_path: Optional[str] = typer.Option(None, "--storage-path", help="checkpoint storage: local dir, s3://, shared FS (./ray_results)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    verbose: bool = typer.Option(False, "--verbose", help="show Ray's worker and controller logs"),
) -> None:
    """Train WGAN, WGAN-GP or a standard GAN on Ray Train; every run is logged to MLflow."""
    from pipelines.train import TrainingFailed, train as run_train

    cfg = _train_config(config, loss=loss, arch=arch, width=width, steps=steps, batch=batch, n_critic=n_critic,
                        lr=lr, lambda_gp=lambda_gp, clip=clip, critic_norm=critic_norm, z_dim=z_dim,
                        workers=workers, gpu=gpu, seed=seed, log_every=log_every, sample_every=sample_every,
                        checkpoint_every=checkpoint_every)
    try:
        result = run_train(None if resume else cfg, data, experiment=experiment, resume=resume,
                           storage_path=storage_path, address=address, progress=not quiet,
                           steps=steps if resume else None, verbose=verbose)
    except TrainingFailed as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"run {result.run_id}: {result.steps} steps; samples {result.final_grid}; model {result.model_uri}")


@app.command()
@user_errors_exit_2
def sample(
    run_id: str = typer.Argument(..., help="MLflow run id of a training run"),
    n: int = typer.Option(64, "--n", help="number of images"),
    out: Path = typer.Option(Path("samples.png"), "--out", help="FILE.png (a grid) or FILE.npy (uint8 N x H x W x C)"),
    seed: int = typer.Option(0, "--seed", help="latent seed"),
) -> None:
    """Draw images from a run's logged generator."""
    from pipelines.sample import sample as run_sample

    typer.echo(str(run_sample(run_id, n, out, seed=seed)))


@app.command()
@user_errors_exit_2
def interpolate(
    run_id: str = typer.Argument(..., help="MLflow run id of a training run"),
    out: Path = typer.Option(Path("interpolation.png"), "--out", help="output PNG"),
    rows: int = typer.Option(8, "--rows", help="interpolation paths"),
    steps: int = typer.Option(10, "--steps", help="images per path"),
    seed: int = typer.Option(0, "--seed", help="latent seed"),
) -> None:
    """A strip of spherical latent interpolations from a run's logged generator."""
    from pipelines.sample import interpolate as run_interpolate

    typer.echo(str(run_interpolate(run_id, out, rows=rows, steps=steps, seed=seed)))


@app.command()
@user_errors_exit_2
def quickstart(
    steps: int = typer.Option(None, "--steps", help="override the main job's generator steps"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """The main job: prepare Fashion-MNIST offline, train WGAN-GP on Ray Train, log it all to MLflow."""
    from pipelines.quickstart import quickstart as run_quickstart

    run_quickstart(steps=steps, progress=not quiet)


def main() -> None:  # pragma: no cover - console entry point helper
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
