"""Connecting to Ray and sizing train workers for the cluster at hand."""

from __future__ import annotations

import math
import os

import ray

# Ray Train V2's controller collects a worker's report only when it polls (every 2 s by
# default) and a worker's next report waits for that: measured here, every report after
# the first blocked 2.0 s, 0.25 s with 0.25. Small runs checkpoint more often than that.
TRAIN_POLL_INTERVAL_S = "0.25"


def init_ray(address: str | None = None, verbose: bool = False) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray; True when local.

    A local Ray starts its dashboard (on 127.0.0.1:8265, about 1 s of start-up here):
    Ray Train frees the workers of a run whose driver died (a sweep's early-stopped
    trial) only after Ray's state API, served by the dashboard, says so; without it
    those CPUs stay held until Ray stops. Worker logs reach the terminal only with
    ``verbose``: errors come back through exceptions anyway.
    A local Ray also polls train workers every 0.25 s (see TRAIN_POLL_INTERVAL_S);
    a cluster keeps its own setting.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=verbose)
        else:
            os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_INTERVAL_S)
            ray.init(include_dashboard=True, log_to_driver=verbose)
    return not address


def worker_resources(workers: int, gpu: bool, local: bool,
                     cpus_per_worker: float | None = None) -> tuple[dict, int | None]:
    """Per-worker Ray resources and the torch thread count for each worker.

    On a local CPU machine one CPU is left free for Ray Data's read tasks, which
    otherwise wait forever behind train workers that hold every CPU; workers get
    fractional CPUs when there are not enough whole ones, and torch threads are
    set from the physical cores each worker may use.
    """
    if cpus_per_worker is not None:
        return ({"CPU": cpus_per_worker, "GPU": 1} if gpu else {"CPU": cpus_per_worker},
                max(1, math.floor(cpus_per_worker)))
    if gpu:
        return {"CPU": 1, "GPU": 1}, None
    if not local:
        return {"CPU": 1}, None
    total = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
    share = min(1.0, max(total - 1, 0.5) / workers)
    return {"CPU": share}, max(1, math.floor((os.cpu_count() or 1) / workers))
