"""The `wganctl` command line: a thin Typer layer over the stage functions.

Each command parses its options, calls one function of `pipelines.*`, and turns a
`wgan.errors.UserError` into a one-line message and exit code 2.
"""

from __future__ import annotations

import functools
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
    typer.echo(f"prepared {result.manifest['count']} images -> {result.out}")


def main() -> None:  # pragma: no cover - console entry point helper
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
