"""What a Train run holds on Ray (its controller and its workers' placement group), and giving it
back for certain.

Why our own: Ray Train V2 creates a run's worker group placement group from its controller
actor. Ray keeps a non-detached group until its creator *and its job* are dead, so a
controller killed with its Tune trial (ASHA's early stop, PBT's exploit, an error) leaves its
group reserved for as long as the sweep's driver lives. Ray Train's answer is a detached
``PlacementGroupCleaner`` that removes the group once Ray's state API (the dashboard) reports
the controller dead; under load, or with no dashboard, that never happens, and the next trial
waits forever for CPUs (issue 34: two 0.99-CPU groups of stopped trials held a 2-CPU machine).

Here the process that starts the runs keeps a `GroupLedger` (a named actor of its own, no
CPU): a trial records the actor that drives its train run, and the run's controller records
itself and its placement group when the group starts (`RecordGroup`, a Ray Train callback, at
the hook where Ray registers the group with its own cleaner). When Tune ends a trial, the
sweep's driver takes that trial's entries and `release` kills the driver and the controller
and removes the group, checked in Ray's placement group table. It waits on nothing but Ray's
GCS: no state API, no timing.

`RecordGroup` also says, each time Ray Train gives up waiting for a group and tries again
(``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``), what the run needs and what holds the CPUs
(`describe_wait`), on the driver's console.
"""

from __future__ import annotations

import math
import os
from typing import Any

import ray
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

# Ray Train's own default wait for a worker group's placement group before it retries
# (ray.train.v2._internal.constants.DEFAULT_WORKER_GROUP_START_TIMEOUT_S); a local Ray gets a
# shorter one (connect.LOCAL_RAY_ENV), so that a waiting run says so sooner.
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
RAY_DEFAULT_START_TIMEOUT_S = 60.0


def start_timeout_s() -> float:
    return float(os.environ.get(START_TIMEOUT_ENV) or RAY_DEFAULT_START_TIMEOUT_S)


def start_retries(wait_s: float) -> int:
    """Ray Train's ``controller_failure_limit`` for a run that may wait ``wait_s`` for its workers:
    each failed start waits `start_timeout_s`, then the controller retries (a controller failure)."""
    return max(0, math.ceil(wait_s / start_timeout_s()) - 1)


@ray.remote(num_cpus=0)
class GroupLedger:
    """What each owner (a Tune trial id) holds for its current train run: the actor that drives the
    run, the run's controller, its placement group; and the waiting notes of runs that cannot
    start. Owned by the driver that starts the runs: it lives exactly as long as they may."""

    def __init__(self) -> None:
        self._held: dict[str, list[tuple[Any, PlacementGroup | None]]] = {}
        self._notes: list[str] = []

    def hold(self, owner: str, driver) -> list[tuple[Any, PlacementGroup | None]]:
        """``owner`` starts a new run, driven by actor ``driver``; returns what its earlier runs held,
        which are over (a trial runs one train run at a time: PBT's exploit and a restored trial
        start another)."""
        earlier = self._held.pop(owner, [])
        self._held[owner] = [(driver, None)]
        return earlier

    def record(self, owner: str, controller, group: PlacementGroup) -> None:
        self._held.setdefault(owner, []).append((controller, group))

    def take(self, owner: str) -> list[tuple[Any, PlacementGroup | None]]:
        return self._held.pop(owner, [])

    def take_all(self) -> list[tuple[Any, PlacementGroup | None]]:
        held, self._held = self._held, {}
        return [entry for entries in held.values() for entry in entries]

    def note(self, text: str) -> None:
        self._notes.append(text)

    def notes(self) -> list[str]:
        notes, self._notes = self._notes, []
        return notes


def ledger(name: str):
    """The driver's ledger ``name``, created if it is not there yet (in this job's namespace)."""
    return GroupLedger.options(name=name, get_if_exists=True).remote()


def release(entries: list[tuple[Any, PlacementGroup | None]]) -> list[str]:
    """Kill each actor (the run's driver first, so that it records nothing after, then its
    controller) and remove each placement group; returns the ids of the groups that were still
    reserved (and are removed now)."""
    removed = []
    for actor, _ in entries:
        if actor is not None:
            ray.kill(actor, no_restart=True)  # a no-op for an actor that is already dead
    for _, group in entries:
        if group is not None and placement_group_table(group).get("state", "REMOVED") != "REMOVED":
            remove_placement_group(group)
            removed.append(group.id.hex())
    return removed


def held_groups() -> list[dict]:
    """The placement groups Ray still reserves or tries to: id, state, CPUs and GPUs."""
    groups = []
    for group_id, entry in placement_group_table().items():
        if entry["state"] == "REMOVED":
            continue
        bundles = list(entry["bundles"].values())
        groups.append({"id": group_id, "name": entry.get("name") or "", "state": entry["state"],
                       "CPU": sum(b.get("CPU", 0) for b in bundles), "GPU": sum(b.get("GPU", 0) for b in bundles)})
    return groups


def describe_wait(workers: int, resources: dict[str, float]) -> str:
    """What a run waits for and what holds it: one line, from Ray's GCS (no state API)."""
    total, free = ray.cluster_resources(), ray.available_resources()
    need = ", ".join(f"{v:g} {k}" for k, v in resources.items() if v)
    holders = [g for g in held_groups() if g["state"] == "CREATED" and (g["CPU"] or g["GPU"])]
    held = "; ".join(f"placement group {g['name'] or g['id'][:12]} holds {g['CPU']:g} CPU"
                     + (f" {g['GPU']:g} GPU" if g["GPU"] else "") for g in holders) or "no placement group"
    return (f"{workers} worker(s) x {need}; {free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs free"
            + (f", {free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPUs" if total.get("GPU") else "")
            + f"; {held}")


class RecordGroup(ControllerCallback, WorkerGroupCallback):
    """A Ray Train callback (its controller runs it): records the run's controller and placement
    group in the ledger ``ledger_name`` under ``owner`` as the group starts. While the group cannot
    be placed, each retry puts a waiting note in ``queue`` (a train run's progress feed) or, for a
    trial, in the ledger.

    Ray Train takes a callback that is not a ``UserCallback`` as one of its own
    (``DataParallelTrainer._create_default_callbacks``: "custom workarounds built on top of
    internal callbacks"); these hooks are Ray's own cleaner's (``PlacementGroupCleanerCallback``).
    """

    def __init__(self, owner: str, ledger_name: str | None, *, workers: int, resources: dict[str, float],
                 queue=None):
        self.owner, self.ledger_name, self.queue = owner, ledger_name, queue
        self.workers, self.resources = workers, resources
        self.controller = None

    def after_controller_start(self, train_run_context) -> None:
        self.controller = ray.get_runtime_context().current_actor

    def after_worker_group_start(self, worker_group) -> None:
        if self.ledger_name is None:
            return
        group = worker_group.get_worker_group_state().placement_group_handle.placement_group
        ray.get(ray.get_actor(self.ledger_name).record.remote(self.owner, self.controller, group))

    def after_controller_state_update(self, previous_state, current_state) -> None:
        from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

        failure = getattr(current_state, "training_failed_error", None)
        if not isinstance(getattr(failure, "controller_failure", None), WorkerGroupStartupTimeoutError):
            return
        text = f"waiting {start_timeout_s():g} s more for {describe_wait(self.workers, self.resources)}"
        if self.queue is not None:
            self.queue.put({"note": text})
        elif self.ledger_name is not None:
            ray.get_actor(self.ledger_name).note.remote(f"trial {self.owner}: {text}")
