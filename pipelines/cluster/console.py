"""What the console shows while a command runs: our lines, and Ray's and MLflow's only with --verbose.

At the default verbosity a command prints its progress (`pipelines.cluster.progress`), its
results, warnings that need action and one-line errors. What Ray and MLflow log goes to Ray's
log files (the session's ``logs/``: workers, Ray Data's ``ray-data.log``) or nowhere:

* Ray's workers, actors and Train controller: ``ray.init(log_to_driver=verbose)``, and the
  driver's own ``ray`` logger (token authentication, "Started a local Ray instance") at ERROR
  (`ray_logging_level`): `pipelines.cluster.connect.init_ray`.
* Ray Data on the driver (execution plans, "Progress bars disabled ..."): its documented
  ``RAY_DATA_LOGGING_CONFIG``, pointed at ``ray_data_logging.yaml`` (errors only on the console).
  Its progress bars: ``DataContext.enable_progress_bars = verbose`` (`init_ray`).
* MLflow: ``MLFLOW_LOGGING_LEVEL=ERROR`` and no "Downloading artifacts" bars
  (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false``).

* Ray core's notice about Ray Data's actor pools: `ray_notices_filtered` (below).

Ray Data and MLflow read these variables when they are imported, and a local Ray's processes
inherit them when it starts, so `quiet` runs before either: the CLI calls it before any stage
module is imported. A variable the user has set is left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from pathlib import Path

QUIET_ENV = {
    "RAY_DATA_LOGGING_CONFIG": str(Path(__file__).with_name("ray_data_logging.yaml")),
    "MLFLOW_LOGGING_LEVEL": "ERROR",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_set_here: set[str] = set()
_verbose = False


def quiet() -> None:
    """Keep Ray's and MLflow's logging off the console (before they are imported)."""
    for key, value in QUIET_ENV.items():
        if key not in os.environ:
            os.environ[key] = value
            _set_here.add(key)


def verbose() -> None:
    """Undo `quiet` (--verbose): Ray's and MLflow's own console logging, as they configure it."""
    global _verbose
    _verbose = True
    for key in sorted(_set_here):
        os.environ.pop(key, None)
    _set_here.clear()


def ray_logging_level(verbose: bool) -> int:
    """The level of the driver's ``ray`` logger: INFO (Ray's default) with --verbose, else only errors."""
    return logging.INFO if verbose else logging.ERROR


# Printed by the driver's core worker (C++, straight to file descriptor 2) for every actor of a Ray Data
# actor pool: Ray Data passes its map transformer and context to them as object refs and restarts them
# (max_restarts=-1), and Ray core warns that such an actor could not be restarted if those objects were
# lost (ray-project/ray#53727). Ray Data's operator holds them while the dataset runs, and in Ray 2.60 the
# only switch is map_batches' deprecated ray_remote_args (max_restarts=0). Nothing for the user to do.
ACTOR_POOL_NOTICE = re.compile(r"core_worker\.cc:\d+: Actor with class name: 'MapWorker\(.*ray/issues/53727")
DRAIN_TIMEOUT_S = 5.0


def quiet_now() -> bool:
    """True at the default verbosity, False once `verbose` (--verbose) ran in this process."""
    return not _verbose


@contextlib.contextmanager
def ray_notices_filtered(drop: re.Pattern = ACTOR_POOL_NOTICE, enabled: bool | None = None):
    """While the block runs, lines written to file descriptor 2 (Python's and Ray core's C++ logging
    alike) that match ``drop`` are left out; the rest pass through to stderr as they come. On by
    default only at the default verbosity (`quiet_now`)."""
    if not (quiet_now() if enabled is None else enabled):
        yield
        return
    sys.stderr.flush()
    console = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:  # until fd 2 points back at the console (EOF)
                if not drop.search(line.decode(errors="replace")):
                    os.write(console, line)

    thread = threading.Thread(target=pump, name="wganctl-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(console, 2)  # the pipe's last writer goes: the pump sees EOF and ends
        thread.join(timeout=DRAIN_TIMEOUT_S)
        os.close(console)
