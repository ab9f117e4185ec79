"""Connecting to Ray and sizing train workers for the cluster at hand."""

from __future__ import annotations

import math
import os

import ray


def init_ray(address: str | None = None, verbose: bool = False) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray; True when local.

    A local Ray gets no dashboard: on a small machine it costs a core's worth of
    start-up time and nothing in the pipeline needs it. Worker logs reach the
    terminal only with ``verbose``: errors come back through exceptions anyway.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=verbose)
        else:
            ray.init(include_dashboard=False, log_to_driver=verbose)
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
