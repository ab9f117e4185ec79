"""Sampling from a logged generator: grids, arrays and latent interpolations.

Works from the MLflow model alone (docs/architecture.md, section 3), so it runs
on a machine that never saw the training. A run is named by its id or by a registered
version's ``models:/`` URI (`pipelines.tracking.resolve_run_id`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wgan.errors import UserError
from wgan.images import grid, interpolation_latents
from pipelines import tracking
from pipelines.stage_options import InterpolateOptions, SampleOptions


def _check_output(out: str | Path) -> None:
    if Path(out).suffix not in (".png", ".npy"):
        raise UserError(f"unsupported output {Path(out).name}: use a .png (grid) or .npy (uint8 N x H x W x C) file")


def save_images(images: np.ndarray, out: str | Path, nrow: int | None = None) -> Path:
    """``.png``: a grid picture; ``.npy``: the uint8 N x H x W x C array."""
    _check_output(out)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, images)
    else:
        picture = grid(images, nrow=nrow)
        Image.fromarray(picture.squeeze(-1) if picture.shape[-1] == 1 else picture).save(out)
    return out


def sample(run_id: str, out: str | Path, options: SampleOptions | None = None,
           checkpoint: str | int | None = None) -> Path:
    """``options.n`` images (`SampleOptions`) of run ``run_id``'s generator (a run id, or a ``models:/NAME@ALIAS`` /
    ``models:/NAME/VERSION`` URI: its source run) into ``out``. ``checkpoint``: the generator of the
    run's checkpoint at that step, or ``best`` (`train --eval-every`), not its logged (final) model."""
    options = (options or SampleOptions()).validate()
    n, seed, label = options.n, options.seed, options.label
    _check_output(out)
    client = tracking.client(needs=f"MLflow run {run_id!r}")
    run_id = tracking.resolve_run_id(client, run_id)
    model, z_dim = tracking.load_generator(run_id, checkpoint)
    if label is not None:
        classes = int(client.get_run(run_id).data.params.get("num_classes", 0))
        if not classes:
            raise UserError(f"run {run_id} is not class-conditional: drop --class, or train with --conditional")
        if not 0 <= label < classes:
            raise UserError(f"--class must be in [0, {classes - 1}] for run {run_id}, got {label}")
    z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed)).numpy()
    images = model.predict(z, params={"label": label} if label is not None else None)
    return save_images(np.asarray(images, dtype=np.uint8), out)


def interpolate(run_id: str, out: str | Path, options: InterpolateOptions | None = None,
                checkpoint: str | int | None = None) -> Path:
    """Spherical latent interpolations (`InterpolateOptions`: rows of steps) of the run's logged generator
    (or of ``checkpoint``, as in `sample`)."""
    options = (options or InterpolateOptions()).validate()
    rows, steps, seed = options.rows, options.steps, options.seed
    _check_output(out)
    model, z_dim = tracking.load_generator(run_id, checkpoint)
    z = interpolation_latents(z_dim, rows, steps, seed).numpy()
    return save_images(np.asarray(model.predict(z), dtype=np.uint8), out, nrow=steps)
