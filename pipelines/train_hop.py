"""What crosses the Ray hop to a train run's controller and workers, and nothing heavy.

Ray Train's controller (a process of its own, started for every run) unpickles the train
function, its config and the callbacks, and so imports the modules they are defined in. Were
that `pipelines.train_worker`, every run would wait for torch, torchvision and MLflow to be
imported twice, once in the controller, which never trains (3.5-4 s each on a 2-core machine,
`benchmarks/RESULTS-issue31.md`). So the entry point and its config live here, with the
standard library only: the loop is imported in the workers alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WorkerConfig:
    """What the driver (`pipelines.train._fit`) sends every worker, whole, as Ray Train's
    ``train_loop_config={"worker": WorkerConfig(...)}``."""

    train_config: dict  # TrainConfig.to_dict(), resolved
    run_settings: dict  # RunSettings.to_dict()
    mlflow_run_id: str
    tracking_uri: str
    torch_threads: int | None = None  # this worker's share of a local machine's cores (connect.worker_resources)
    progress_queue: Any = None  # rank 0's progress updates to the driver's console (a ray.util.queue.Queue)
    objective: dict | None = None  # tune's sample-quality objective at every checkpoint (pipelines.objective)
    evaluation: dict | None = None  # --eval-every: what rank 0 scores samples with (pipelines.objective)
    init_checkpoint: str | None = None  # PBT: another trial's checkpoint to start from
    # --resume past unreadable checkpoints: Ray Train still names the newest; the workers skip these
    skipped_checkpoints: list[str] = field(default_factory=list)
    fallback_checkpoint: str | None = None  # ... and go on from this one
    in_memory: Any = None  # small data: the table, put once (ObjectRef); else None: a Ray Data shard streams
    system_metrics_interval_s: float | None = None  # rank 0's machine, in the run
    fail_at_step: int | None = None  # the test hook (module docstring)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point: ``config["worker"]``, a `WorkerConfig`, to `pipelines.train_worker`'s loop."""
    from pipelines.train_worker import run_worker  # in the worker only: torch, MLflow

    run_worker(config["worker"])
