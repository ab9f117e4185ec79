"""Connecting to Ray and sizing train workers for the cluster at hand."""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
import time
from typing import Any, Callable

import ray

from pipelines.cluster.console import ray_logging_level
from wgan.errors import UserError

# Settings for a Ray started on this machine (a cluster keeps its own):
LOCAL_RAY_ENV = {
    # Ray Train V2's controller collects a worker's report only when it polls (every 2 s by
    # default) and a worker's next report waits for that: measured here, every report after
    # the first blocked 2.0 s, 0.25 s with 0.25. Small runs checkpoint more often than that.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    # A local machine is never a preempted cloud instance: no watcher actor, whose process
    # start-up (about 3 s here) is on every run's path.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray Train waits this long for a worker group's placement group before it tries again (60 s
    # by default); each try tells the console what the run waits for (pipelines.cluster.holds).
    # A local machine has no autoscaler to wait for: say it sooner.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15",
}


def use_local_ray_env() -> None:
    """Apply LOCAL_RAY_ENV (unless the user set a value) before a local Ray starts: its processes inherit it."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)


# How long a stage waits for a server it needs to answer before it refuses to start, whichever
# server: a Ray cluster's address (ray.init retries one nobody listens on for minutes, printing a
# warning each time) or an http(s) tracking server (MLflow's client retries one for about two minutes).
REACHABLE_TIMEOUT_S = 3.0
_ADDRESS_FORMS = "host:port (the head's GCS port, 6379 by default), auto, or ray://host:10001"


def check_address(address: str | None) -> None:
    """Refuse a Ray address (``address``, else RAY_ADDRESS) that is malformed or where nothing
    accepts a TCP connection within REACHABLE_TIMEOUT_S; ``auto`` and none (a local Ray) pass."""
    import socket

    given = address or os.environ.get("RAY_ADDRESS")
    if not given or given in ("auto", "local"):
        return
    source = "--address" if address else "RAY_ADDRESS"
    target = given.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in target:
        raise UserError(f"{source} {given!r} is not a Ray address: give {_ADDRESS_FORMS}")
    try:
        socket.create_connection((host, int(port)), timeout=REACHABLE_TIMEOUT_S).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else err.strerror or type(err).__name__
        undo = "drop --address" if address else "unset RAY_ADDRESS"
        raise UserError(f"cannot reach a Ray cluster at {given} ({reason}): start it (`ray start --head`) "
                        f"or {undo} to run on a local Ray") from None


def init_ray(address: str | None = None, verbose: bool = False) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray; True when local.

    A local Ray starts its dashboard (on 127.0.0.1:8265, about 1 s of start-up here):
    Ray Train frees the workers of a run whose driver died (a sweep's early-stopped
    trial) only after Ray's state API, served by the dashboard, says so; without it
    those CPUs stay held until Ray stops. Worker logs, the driver's Ray logging below errors
    and Ray Data's progress bars reach the terminal only with ``verbose``
    (`pipelines.cluster.console`): errors come back through exceptions anyway.
    A local Ray also gets LOCAL_RAY_ENV (train workers polled every 0.25 s, no
    preemption watcher); a cluster keeps its own settings.
    """
    import ray.data

    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        level = ray_logging_level(verbose)
        if address:
            ray.init(address=address, log_to_driver=verbose, logging_level=level)
        else:
            use_local_ray_env()
            ray.init(include_dashboard=True, log_to_driver=verbose, logging_level=level)
    # Ray Data's own progress bars (or, off a terminal, progress logs): the stages show theirs.
    ray.data.DataContext.get_current().enable_progress_bars = verbose
    return not address


def is_ray_client(address: str | None) -> bool:
    """True when ``address`` (or RAY_ADDRESS) is a Ray Client address, ray://host:port."""
    return (address or os.environ.get("RAY_ADDRESS") or "").startswith("ray://")


def through_ray_client(stage: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator of a stage function with an ``address`` parameter: called with a Ray Client
    address (``ray://host:port``, or RAY_ADDRESS), the whole stage runs as one task on that
    cluster (`run_through_ray_client`), else here.

    The call is bound to the stage's own signature (`inspect.signature`), so every argument
    travels to the task as given, and a parameter a stage gains later travels too. The task
    gets ``address="auto"`` (it joins the cluster it runs on) and, where the stage has one,
    ``progress=False``: a task has no terminal to draw a bar on.
    """
    signature = inspect.signature(stage)

    @functools.wraps(stage)
    def here_or_on_the_cluster(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        address = bound.arguments.get("address")
        if not is_ray_client(address):
            check_address(address)
            return stage(*args, **kwargs)
        bound.arguments["address"] = "auto"
        if "progress" in signature.parameters:
            bound.arguments["progress"] = False
        return run_through_ray_client(here_or_on_the_cluster, address or os.environ["RAY_ADDRESS"],
                                      bound.args, bound.kwargs)

    return here_or_on_the_cluster


def run_through_ray_client(stage: Callable[..., Any], address: str, args: tuple, kwargs: dict[str, Any]) -> Any:
    """Run ``stage(*args, **kwargs)`` as one task on the cluster behind ``address``, a ray://
    address, and return its result.

    A Ray Client driver has no core worker of its own, and Ray Data's executor (prepare's
    encoding, train's and evaluate's reads) and Tune's driver need one; a task on the
    cluster has one. The task takes no CPU (the stage's own tasks and workers take
    them) and logs to this machine's MLFLOW_TRACKING_URI when one is set (else the
    cluster's own). Paths are the cluster's.
    A UserError comes back as itself (one line, exit 2); Ctrl-C cancels the task, which
    the stage sees as its own Ctrl-C.
    """
    from ray.exceptions import RayTaskError

    check_address(None if address == os.environ.get("RAY_ADDRESS") else address)  # names where it came from
    _connect_client(address)
    env = {key: os.environ[key] for key in ("MLFLOW_TRACKING_URI",) if os.environ.get(key)}
    task = ray.remote(num_cpus=0, max_retries=0, runtime_env={"env_vars": env})(stage)
    ref = task.remote(*args, **kwargs)
    try:
        return ray.get(ref)
    except KeyboardInterrupt:
        ray.cancel(ref)
        raise
    except RayTaskError as err:
        if isinstance(err.cause, UserError):
            raise err.cause from None
        raise


CLIENT_CONNECT_ATTEMPTS = 3
CLIENT_CONNECT_RETRY_S = 5.0
# How the head says it could not start this client's server (a transient state of a
# head that has just started): its runtime-env agent did not answer, or the server
# process died as it started ("psutil.ZombieProcess" inside start_specific_server).
CLIENT_SERVER_START_FAILURES = ("client server failed", "start_specific_server")


def _connect_client(address: str) -> None:
    """Connect through Ray Client, trying again a few times when the head cannot start
    this client's server yet: right after a head starts, each of the
    CLIENT_SERVER_START_FAILURES was seen here, once in several runs."""
    for attempt in range(1, CLIENT_CONNECT_ATTEMPTS + 1):
        try:
            init_ray(address)
            return
        except ConnectionAbortedError as err:
            transient = any(marker in str(err) for marker in CLIENT_SERVER_START_FAILURES)
            if attempt == CLIENT_CONNECT_ATTEMPTS or not transient:
                raise
            print(f"Ray Client: the cluster at {address} could not start a client server yet; "
                  f"trying again in {CLIENT_CONNECT_RETRY_S:g} s", file=sys.stderr)
            time.sleep(CLIENT_CONNECT_RETRY_S)


def worker_resources(workers: int, gpu: bool, local: bool,
                     cpus_per_worker: float | None = None) -> tuple[dict, int | None]:
    """Per-worker Ray resources and the torch thread count for each worker.

    On a local CPU machine one CPU is left free for Ray Data's read tasks, which
    otherwise wait forever behind train workers that hold every CPU; workers get
    fractional CPUs when there are not enough whole ones, and torch threads are
    set from the physical cores each worker may use, or from OMP_NUM_THREADS where the
    user set it (torch's own convention): on a machine other work shares, two threads of a
    small network spin-wait on each other (measured here: a 4-step width-8 run's loop took
    8.8 s on two threads beside one busy core, 3.7 s on one).
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
    return {"CPU": share}, requested_threads() or max(1, math.floor((os.cpu_count() or 1) / workers))


def requested_threads() -> int | None:
    """OMP_NUM_THREADS where it is set to a positive whole number, else None."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def cluster_capacity(local: bool) -> dict[str, float] | None:
    """The most of each resource the connected cluster can ever offer, where that is known: the
    maximum of its autoscaler's node types where the autoscaler has reported them (Ray Train's
    own check reads the same), else, for a ``local`` Ray (started on this machine: it never
    grows), what it has now. None for another cluster: it may grow with demand (GPU workers an
    autoscaler adds) or with nodes joined by hand."""
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - a private API: without it, only a local Ray is known
        most = None
    if most:
        return dict(most)
    return dict(ray.cluster_resources()) if local else None


def check_placeable(per_worker: dict[str, float], workers: int, *, local: bool, workers_option: str = "--workers",
                    gpu_option: str = "--gpu") -> None:
    """Refuse ``workers`` workers of ``per_worker`` resources that the cluster can never place
    (`cluster_capacity`): Ray would wait for them for ever, or Ray Train time out at each restart."""
    capacity = cluster_capacity(local)
    if capacity is None:
        return
    for resource, amount in per_worker.items():
        need, have = amount * workers, capacity.get(resource, 0)
        if need <= have + 1e-9:
            continue
        if resource == "GPU" and have < 1:
            raise UserError(f"no GPU in the Ray cluster: drop {gpu_option} or connect to a cluster with GPUs "
                            f"(--address, RAY_ADDRESS)")
        fit = int(have // amount + 1e-9)
        fix = f"lower {workers_option} to {fit} or add nodes" if fit else f"add nodes with {resource}s"
        raise UserError(f"{workers_option} {workers} needs {need:g} {resource}s ({amount:g} per worker), the Ray "
                        f"cluster has at most {have:g}: {fix}")
