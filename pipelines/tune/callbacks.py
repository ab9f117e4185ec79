"""The sweep driver's Tune callbacks: its console off a terminal, and the release of ended trials."""

from __future__ import annotations

import math
import time

import ray
from ray.tune import Callback

from pipelines import objective
from pipelines.cluster import holds
from pipelines.cluster.progress import StageProgress


class TrialProgress(Callback):
    """Off a terminal, Tune's live table is replaced by a plain line now and then
    (`pipelines.cluster.progress`): trials ended out of all, how many run, the best objective yet.
    Runs on the driver, as Tune's callbacks do."""

    def __init__(self, trials: int):
        self.trials = trials
        self.best = math.inf
        self.ended: set[str] = set()  # Tune sets a trial's status after calling on_trial_complete/_error
        self.progress: StageProgress | None = None

    def __getstate__(self) -> dict:  # Tune saves its run config with the sweep's state: no lock in it
        return {**self.__dict__, "progress": None}

    def setup(self, **info) -> None:
        self.progress = StageProgress("tune", self.trials, "trials ended", terminal=False, describe=self._describe)
        self.progress.__enter__()

    @staticmethod
    def _describe(fields: dict) -> str:
        best = fields["best"]
        return (f"{fields['running']} running  "
                + (f"best Frechet distance {best:.3f}" if math.isfinite(best) else "no objective yet"))

    def _show(self, trials: list) -> None:
        if self.progress is None:
            self.setup()
        self.ended |= {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        running = sum(t.status == "RUNNING" and t.trial_id not in self.ended for t in trials)
        self.progress.update(len(self.ended), running=running, best=self.best)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(objective.METRIC)
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.best = min(self.best, value)
        self._show(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ended.add(trial.trial_id)
        self._show(trials)

    on_trial_error = on_trial_complete  # an errored trial has ended too


class ReleaseEndedTrials(Callback):
    """On the sweep's driver: when Tune ends a trial (finished, stopped early by ASHA, errored), its
    Train run's driver, controller and placement group are released at once (`pipelines.cluster.holds`),
    whatever Ray Train's own cleaner makes of it; a run's waiting notes are printed as they come."""

    NOTES_EVERY_S = 2.0  # Tune's loop steps many times a second: the ledger is asked at most this often

    def __init__(self, ledger: str):
        self.ledger = ledger  # a name: Tune saves its run config, callbacks too, with the sweep's state
        self._asked = 0.0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        holds.release(ray.get(ray.get_actor(self.ledger).take.remote(trial.trial_id)))

    on_trial_error = on_trial_complete

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.monotonic() - self._asked < self.NOTES_EVERY_S:
            return
        self._asked = time.monotonic()
        for note in ray.get(ray.get_actor(self.ledger).notes.remote()):
            print(f"tune: {note}", flush=True)
