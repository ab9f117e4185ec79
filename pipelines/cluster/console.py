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

Ray Data and MLflow read these variables when they are imported, and a local Ray's processes
inherit them when it starts, so `quiet` runs before either: the CLI calls it before any stage
module is imported. A variable the user has set is left as it is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

QUIET_ENV = {
    "RAY_DATA_LOGGING_CONFIG": str(Path(__file__).with_name("ray_data_logging.yaml")),
    "MLFLOW_LOGGING_LEVEL": "ERROR",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_set_here: set[str] = set()


def quiet() -> None:
    """Keep Ray's and MLflow's logging off the console (before they are imported)."""
    for key, value in QUIET_ENV.items():
        if key not in os.environ:
            os.environ[key] = value
            _set_here.add(key)


def verbose() -> None:
    """Undo `quiet` (--verbose): Ray's and MLflow's own console logging, as they configure it."""
    for key in sorted(_set_here):
        os.environ.pop(key, None)
    _set_here.clear()


def ray_logging_level(verbose: bool) -> int:
    """The level of the driver's ``ray`` logger: INFO (Ray's default) with --verbose, else only errors."""
    return logging.INFO if verbose else logging.ERROR
