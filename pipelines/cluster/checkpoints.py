"""A train run's Ray Train checkpoints, wherever they are stored (docs/architecture.md, section 2).

Listing goes through the `wgan.data.fs` resolver and opening through Ray's own
``Checkpoint``, which downloads from an object store into a temporary directory,
so the driver-side readers (tune's closing of trials, ``--register``, evaluate's
``--checkpoint``) work the same on a local disk and on ``s3://``.
"""

from __future__ import annotations

from typing import Any

import ray.train

from wgan import checkpoint as ckpt
from wgan.data import fs as datafs
from wgan.errors import UserError
from pipelines.tracking import ray_run_name

DIR_PREFIX = "checkpoint_"


def dir_name(step: int) -> str:
    """The directory a run's checkpoint at ``step`` gets: sorted by name is sorted by step."""
    return f"{DIR_PREFIX}{step:07d}"


def check_storage(storage_path: str) -> None:
    """Refuse a storage path Ray Train could not keep checkpoints in, where that is knowable before
    Ray starts (`wgan.data.fs.cannot_write`: a file in the way, an unwritable directory, an unknown scheme)."""
    problem = datafs.cannot_write(storage_path, fsspec_too=True)
    if problem:
        raise UserError(f"--storage-path {storage_path}: {problem}: give a directory to keep the checkpoints in "
                        f"(a local path, s3://BUCKET/PREFIX, a shared filesystem)")


def run_checkpoints(storage_path: str, run_id: str) -> list[str]:
    """Locations of the run's checkpoints, oldest first."""
    return datafs.subdirectories(datafs.join(storage_path, ray_run_name(run_id)), DIR_PREFIX)


def location(checkpoint: ray.train.Checkpoint) -> str:
    """A Ray checkpoint as a location string (a URI on object stores) that `load` takes back."""
    return datafs.uri(checkpoint.filesystem, checkpoint.path)


def load(where: str) -> dict[str, Any]:
    """The payload of the checkpoint at ``where`` (a local directory or URI), read without unpickling."""
    filesystem, path = datafs.resolve(where)
    with ray.train.Checkpoint(path, filesystem=filesystem).as_directory() as directory:
        return ckpt.load(directory)
