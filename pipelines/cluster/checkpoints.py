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
from pipelines.tracking import ray_run_name, run_tags

DIR_PREFIX = "checkpoint_"
# An unreadable checkpoint is copied aside under this prefix (never deleted): out of the run's
# checkpoint names. The original stays (Ray Train's snapshot of the run lists it, and its
# controller refuses to start without it) until the run writes that step again.
SET_ASIDE_PREFIX = "unreadable-"


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
        try:
            return ckpt.load(directory)
        except UserError as err:  # named by where it is stored, not by the download's temporary copy
            raise UserError(str(err).replace(str(directory).rstrip("/"), where.rstrip("/"))) from None


def newest_loadable(storage_path: str, run_id: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The run's newest checkpoint that loads (None if none does), and the newer ones that do not,
    newest first, each as (directory name, why): truncated, corrupt, or a directory a kill left
    without its file."""
    return _first_loadable(reversed(run_checkpoints(storage_path, run_id)))


def loadable_at_or_before(where: str) -> tuple[str | None, list[tuple[str, str]]]:
    """``where`` if it loads, else the newest of its run's earlier checkpoints that does (PBT's
    exploit of a donor checkpoint that a fault left unreadable); as `newest_loadable`."""
    earlier = [other for other in datafs.subdirectories(datafs.parent(where), DIR_PREFIX)
               if datafs.name(other) <= datafs.name(where)]
    return _first_loadable(reversed(earlier))


def _first_loadable(candidates) -> tuple[str | None, list[tuple[str, str]]]:
    skipped = []
    for where in candidates:
        try:
            load(where)
            return where, skipped
        except UserError as err:
            skipped.append((datafs.name(where), str(err)))
    return None, skipped


def set_aside(storage_path: str, run_id: str, name: str) -> str:
    """Copy the run's checkpoint directory ``name`` to ``unreadable-<name>`` beside it, byte for byte
    (``pyarrow.fs.copy_files``: local and object stores alike); returns the copy's name."""
    import pyarrow.fs as pafs

    filesystem, run_dir = datafs.resolve(datafs.join(storage_path, ray_run_name(run_id)))
    copy = f"{SET_ASIDE_PREFIX}{name}"
    filesystem.create_dir(f"{run_dir}/{copy}", recursive=True)  # a directory a kill left empty is kept too
    pafs.copy_files(f"{run_dir}/{name}", f"{run_dir}/{copy}", source_filesystem=filesystem,
                    destination_filesystem=filesystem)
    return copy


BEST = "best"  # `--checkpoint best`: the checkpoint Ray Train ranked best by eval/fd (train --eval-every)


def step_of(run, which: str | int) -> int:
    """The step ``--checkpoint`` names: a step, or ``best`` (the run's ``wganctl.best_step`` tag)."""
    if str(which) == BEST:
        best = run.data.tags.get(run_tags.BEST_STEP)
        if best is None:
            raise UserError(f"run {run.info.run_id} has no best checkpoint: it trained without --eval-every "
                            f"(or has not finished); give a step it checkpointed, or drop --checkpoint")
        return int(best)
    try:
        step = int(which)
    except ValueError:
        raise UserError(f"--checkpoint {which!r}: give a step the run checkpointed, or best") from None
    if step < 1:
        raise UserError(f"--checkpoint must be a step >= 1 or best, got {step}")
    return step


def of_run(run, which: str | int) -> tuple[int, dict[str, Any]]:
    """The run's checkpoint that ``which`` names (a step, or ``best``), loaded and verified before Ray
    starts (local or remote storage); refused in one line if it has none there, or it does not load."""
    step = step_of(run, which)
    storage = run.data.tags.get(run_tags.STORAGE_PATH, "")
    saved = run_checkpoints(storage, run.info.run_id) if storage else []
    wanted = [where for where in saved if datafs.name(where) == dir_name(step)]
    steps = ", ".join(str(int(datafs.name(where).removeprefix(DIR_PREFIX))) for where in saved)
    if not wanted:
        raise UserError(f"run {run.info.run_id} has no checkpoint at step {step} in {storage or 'its storage'}: "
                        f"give a step it checkpointed ({steps or 'none are left'})")
    try:
        return step, load(wanted[0])
    except UserError as err:
        raise UserError(f"run {run.info.run_id}'s checkpoint at step {step} cannot be used: {err}: "
                        f"give another step it checkpointed ({steps})") from err
