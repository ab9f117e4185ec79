"""The `wganctl` command line: a thin Typer layer over the stage functions.

Each command parses its options, calls one function of `pipelines.*`, and turns a
`wgan.errors.UserError` into a one-line message and exit code 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
import typer.core

from wgan.config import RunSettings, TrainConfig
from wgan.errors import UserError, no_space
from pipelines.cli_options import Only, config_values, knob_options, stage_options
from pipelines.cluster import console
from pipelines.search_space import SweepSettings
from pipelines.stage_options import (AugmentOptions, ClassifierOptions, EvaluateOptions, InterpolateOptions,
                                     PrepareOptions, SampleOptions, ServerSettings)

try:  # the Click that Typer parses with: its own copy since Typer 0.2x, else the installed one
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as _click_errors


@contextlib.contextmanager
def _usage_errors_in_one_line():
    """A command line Click cannot parse (a value of the wrong type, an unknown option, a missing
    argument) is bad input like any other: one line on stderr that says what to do, exit 2."""
    try:
        yield
    except getattr(_click_errors, "NoArgsIsHelpError", ()):
        raise  # the help screen, not an error
    except _click_errors.UsageError as err:
        command = err.ctx.command_path if err.ctx is not None else "wganctl"
        message = " ".join(err.format_message().split())
        typer.echo(f"error: {message} (`{command} --help` lists the options)", err=True)
        raise typer.Exit(code=2)


class _OneLineUsageErrors(typer.core.TyperGroup):
    """The root command: its own and its subcommands' parse errors in one line (`_usage_errors_in_one_line`)."""

    def make_context(self, *args, **kwargs):
        with _usage_errors_in_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors_in_one_line():
            return super().invoke(ctx)


app = typer.Typer(
    name="wganctl",
    help="Train, sweep and compare Wasserstein GANs on Ray, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_OneLineUsageErrors,
)


ADDRESS_HELP = "Ray cluster address: host:port, auto or ray://host:10001 (default: RAY_ADDRESS, else a local Ray)"
CHECKPOINT_HELP = ("the generator of the run's checkpoint at this step, or best (the one Ray Train ranked best by "
                   "eval/fd: train --eval-every), not its logged final model")
CONFIG_OPTION = typer.Option(None, "--config", help="YAML/JSON file of this command's options, keyed by option name "
                             "with _ (options given here win)")
# The train options a sweep's trials share unless its space sweeps them, declared where train declares them.
TUNE_TRAIN_OPTIONS = Only(TrainConfig, ("width", "batch"))
RUN_HELP = ("MLflow run id of a training run, or a registered version of its generator: models:/NAME@ALIAS "
            "(e.g. models:/NAME@champion after `tune --register NAME`) or models:/NAME/VERSION")


@app.callback()
def _root() -> None:
    """Train, sweep and compare Wasserstein GANs on Ray, tracked in MLflow."""
    console.quiet()  # before any stage module imports Ray Data or MLflow: they read it then
    # MLflow announces creating its sqlite tables on stderr; errors must stay one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Nor may MLflow's bar for reading a run's small artifacts (config.json) precede an error.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def user_errors_exit_2(fn):
    """Report bad input as one line on stderr and exit 2, never a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2)
        except Exception as err:  # a full disk that no stage named: still one line, exit 2
            full = no_space(err)
            if full is None:
                raise
            where = getattr(full, "filename", None)
            typer.echo(f"error: no space left on device{f' writing {where}' if where else ''} "
                       f"({str(full).splitlines()[0][:200]}): free space there, or write elsewhere, "
                       f"and run the command again", err=True)
            raise typer.Exit(code=2)

    return wrapper


def echo_ui_hint(run_id: str) -> None:
    """End a command with the run's MLflow UI URL (and how to start a UI on a local store)."""
    from pipelines.tracking import ui_hint

    for line in ui_hint(run_id):
        typer.echo(line)


@app.command()
@user_errors_exit_2
@knob_options(PrepareOptions)
def prepare(
    dataset: str = typer.Argument(..., help="fashion-mnist, mnist, cifar10, stl10, or imagefolder"),
    path: Optional[str] = typer.Argument(None, help="the image folder (with DATASET=imagefolder)"),
    out: Optional[str] = typer.Option(None, "--out", help="output directory (default data/<dataset>-<size>px)"),
    force: bool = typer.Option(False, "--force", help="rebuild even if an identical dataset exists"),
    config: Optional[Path] = CONFIG_OPTION,
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    **knob_values,
) -> None:
    """Read an image dataset, resize it, and write parquet shards plus manifest.json."""
    from pipelines.prepare import prepare as run_prepare

    options = stage_options(PrepareOptions, config, knob_values)
    result = run_prepare(dataset, path, options=options, out=out, force=force, progress=not quiet, address=address)
    if result.up_to_date:
        typer.echo(f"{result.out} is up to date ({result.manifest['count']} images); use --force to rebuild it")
        return
    skipped = result.manifest["skipped"]["count"]
    note = f" (skipped {skipped} unreadable files, listed in manifest.json)" if skipped else ""
    typer.echo(f"prepared {result.manifest['count']} images -> {result.out}{note}")


def _resumed_train_settings(resume: str, values: dict[str, dict]) -> "RunSettings | None":
    """--resume: refuse an option that would change the run, apply the run settings given."""
    from pipelines.train import logged_run_settings
    from wgan.config import TrainConfig
    from wgan.knobs import knobs

    refused = [k.option for k in knobs(TrainConfig) if k.name in values["TrainConfig"] and not k.on_resume]
    if refused:
        raise UserError(f"{', '.join(refused)} would change the model or objective of run {resume}, which --resume "
                        f"continues as it was: drop {'it' if len(refused) == 1 else 'them'}, or start a new run "
                        f"(--workers, --gpu, --precision, the intervals and --storage-path may change)")
    if not values["RunSettings"]:
        return None
    return dataclasses.replace(logged_run_settings(resume), **values["RunSettings"])


@app.command()
@user_errors_exit_2
@knob_options(TrainConfig, RunSettings)
def train(
    data: Optional[str] = typer.Option(None, "--data", help="prepared dataset directory (from `wganctl prepare`)"),
    experiment: str = typer.Option("wganctl", "--experiment", help="MLflow experiment"),
    resume: Optional[str] = typer.Option(None, "--resume", help="MLflow run id to continue: the same run, from its "
                                         "last checkpoint; run settings given here apply (recorded in its "
                                         "wganctl.resumed_with tag), options that would change the model are refused"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of train options, keyed by option "
                                          "name with _ (options given here win)"),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    verbose: bool = typer.Option(False, "--verbose", help="show Ray's and MLflow's own logs and progress bars"),
    **knob_values,
) -> None:
    """Train WGAN, WGAN-GP, a standard or a hinge GAN on Ray Train; every run is logged to MLflow."""
    if verbose:
        console.verbose()
    from pipelines.train import Resume, TrainingFailed, fd_lines, train as run_train

    values = config_values(config, knob_values, TrainConfig, RunSettings)
    if resume:
        cfg, settings = None, _resumed_train_settings(resume, values)
        resumed = Resume(resume, steps=values["TrainConfig"].get("steps"))
    else:
        cfg, settings, resumed = TrainConfig.from_dict(values["TrainConfig"]), RunSettings(**values["RunSettings"]), None
    try:
        result = run_train(cfg, data, run=settings, experiment=experiment, resume=resumed, address=address,
                           progress=not quiet)
    except TrainingFailed as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"run {result.run_id}: {result.steps} steps; samples {result.final_grid}; model {result.model_uri}")
    for line in fd_lines(result):
        typer.echo(line)
    echo_ui_hint(result.run_id)


@app.command()
@user_errors_exit_2
@knob_options(SampleOptions)
def sample(
    run_id: str = typer.Argument(..., help=RUN_HELP),
    out: Path = typer.Option(Path("samples.png"), "--out", help="FILE.png (a grid) or FILE.npy (uint8 N x H x W x C)"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP),
    config: Optional[Path] = CONFIG_OPTION,
    **knob_values,
) -> None:
    """Draw images from a run's logged generator (or one of its checkpoints')."""
    from pipelines.sample import sample as run_sample

    options = stage_options(SampleOptions, config, knob_values)
    typer.echo(str(run_sample(run_id, out, options, checkpoint=checkpoint)))


@app.command()
@user_errors_exit_2
@knob_options(InterpolateOptions)
def interpolate(
    run_id: str = typer.Argument(..., help=RUN_HELP),
    out: Path = typer.Option(Path("interpolation.png"), "--out", help="output PNG"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP),
    config: Optional[Path] = CONFIG_OPTION,
    **knob_values,
) -> None:
    """A strip of spherical latent interpolations from a run's logged generator (or one of its checkpoints')."""
    from pipelines.sample import interpolate as run_interpolate

    options = stage_options(InterpolateOptions, config, knob_values)
    typer.echo(str(run_interpolate(run_id, out, options, checkpoint=checkpoint)))


@app.command()
@user_errors_exit_2
@knob_options(SweepSettings, TUNE_TRAIN_OPTIONS)
def tune(
    data: str = typer.Option(..., "--data", help="prepared dataset directory"),
    experiment: str = typer.Option("wganctl-tune", "--experiment", help="MLflow experiment"),
    resume: bool = typer.Option(False, "--resume", help="continue the experiment's interrupted sweep"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of sweep options and of the train "
                                          "options every trial starts from, keyed by option name with _ (options "
                                          "given here win)"),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    **knob_values,
) -> None:
    """Sweep WGAN knobs on Ray Tune; every trial is a train run nested under one MLflow sweep run."""
    from pipelines.tune import tune_sweep

    values = config_values(config, knob_values, TrainConfig, SweepSettings)
    sweep = SweepSettings(**values["SweepSettings"]).validate()
    base = TrainConfig.from_dict(values["TrainConfig"])
    result = tune_sweep(data, sweep, base, experiment=experiment, resume=resume, address=address)
    typer.echo(f"sweep run {result.parent_run_id}: {len(result.trials)} trials")
    if result.best_run_id:
        typer.echo(f"best trial run {result.best_run_id}: Frechet distance {result.best_objective:.3f} with {result.best_config}")
    if result.registered_version:
        typer.echo(f"registered {sweep.register} version {result.registered_version} as "
                   f"models:/{sweep.register}@{sweep.registered_alias}")
    echo_ui_hint(result.parent_run_id)


@app.command()
@user_errors_exit_2
def quickstart(
    steps: int = typer.Option(None, "--steps", help="override the main job's generator steps"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """The main job: prepare Fashion-MNIST offline, train its WGAN on Ray Train measured as it goes, log it all to MLflow."""
    from pipelines.quickstart import quickstart as run_quickstart

    run_quickstart(steps=steps, progress=not quiet)


@app.command("train-classifier")
@user_errors_exit_2
@knob_options(ClassifierOptions)
def train_classifier(
    data: str = typer.Argument(..., help="prepared, labelled dataset directory (from `wganctl prepare`)"),
    experiment: str = typer.Option("wganctl", "--experiment", help="MLflow experiment"),
    config: Optional[Path] = CONFIG_OPTION,
    quiet: bool = typer.Option(False, "--quiet", help="no per-epoch lines"),
    **knob_values,
) -> None:
    """Train the project classifier whose features `wganctl evaluate` measures in; logged as its own MLflow run."""
    from pipelines.classifier import train_classifier as run_train_classifier

    options = stage_options(ClassifierOptions, config, knob_values)
    result = run_train_classifier(data, options, experiment=experiment, progress=not quiet)
    floor = "" if result.fd_test_vs_train is None else f"; FD(test, train) floor {result.fd_test_vs_train:.4g}"
    typer.echo(f"classifier run {result.run_id}: test accuracy {result.test_accuracy:.4f}{floor}")


@app.command()
@user_errors_exit_2
@knob_options(EvaluateOptions)
def evaluate(
    run_id: str = typer.Argument(..., help=RUN_HELP),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP + "; metrics logged at that step"),
    config: Optional[Path] = CONFIG_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    **knob_values,
) -> None:
    """Measure a run's samples against its training data (FID, KID, precision/recall, class coverage, IS); log into the run."""
    from pipelines.evaluate import evaluate as run_evaluate

    options = stage_options(EvaluateOptions, config, knob_values)
    result = run_evaluate(run_id, options, checkpoint=checkpoint, address=address, progress=not quiet)
    for name, value in result.metrics.items():
        typer.echo(f"{name:24s} {value:.6g}")
    extractor = f"classifier run {result.classifier_run}" if result.classifier_run else "InceptionV3"
    typer.echo(f"{extractor}; reference features {result.reference}")
    echo_ui_hint(result.run_id)


@app.command()
@user_errors_exit_2
def compare(
    run_ids: List[str] = typer.Argument(..., help="evaluated runs: MLflow run ids or models:/NAME@ALIAS, "
                                        "models:/NAME/VERSION (the registered version's run)"),
    out: Optional[Path] = typer.Option(None, "--out", help="FILE.png: the runs' eval grids side by side"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="each run's eval metrics at this step, or "
                                             "at its best (train --eval-every), not its latest"),
) -> None:
    """Print a table of runs' eval metrics and, with --out, put their sample grids side by side."""
    from pipelines.evaluate import compare as run_compare

    table, picture = run_compare(run_ids, out, checkpoint=checkpoint)
    typer.echo(table)
    if picture is not None:
        typer.echo(str(picture))


@app.command()
@user_errors_exit_2
@knob_options(ServerSettings)
def server(config: Optional[Path] = CONFIG_OPTION, **knob_values) -> None:
    """Run an MLflow tracking server for Ray clusters: database backend, artifacts served through it."""
    from pipelines.tracking.server import exposure_warning, preflight, serve

    settings = stage_options(ServerSettings, config, knob_values).resolved()
    host, basic_auth = settings.host, settings.basic_auth
    preflight(settings)  # an error is the one line printed: before the warning
    warning = exposure_warning(host, basic_auth)
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    try:
        code = serve(settings, announce=typer.echo)
    except (RuntimeError, TimeoutError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=1)
    raise typer.Exit(code=code)


experiment_app = typer.Typer(help="Experiments built on the stages.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("augment")
@user_errors_exit_2
@knob_options(AugmentOptions)
def augment(
    data: str = typer.Option(..., "--data", help="prepared, labelled dataset with train and test splits"),
    runs: Optional[List[str]] = typer.Option(None, "--runs", help="conditional train runs whose samples are added (one arm each); repeatable"),
    experiment: str = typer.Option("wganctl-augment", "--experiment", help="MLflow experiment"),
    config: Optional[Path] = CONFIG_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    **knob_values,
) -> None:
    """Train the classifier on N real images per class, alone and plus each run's samples; compare real-test accuracy."""
    from pipelines.augment import augment_experiment

    options = stage_options(AugmentOptions, config, knob_values)
    result = augment_experiment(data, runs or [], options, experiment=experiment, address=address)
    typer.echo(f"{'arm':<16} {'accuracy':>9} {'spread':>8}")
    for arm, (mean, spread) in result.summary.items():
        typer.echo(f"{arm:<16} {mean:>9.4f} {spread:>8.4f}")
    typer.echo(f"MLflow run {result.run_id}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
