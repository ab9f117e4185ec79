"""A terminal progress bar for a training run fed by rank 0 through a Ray queue."""

from __future__ import annotations

import threading
from queue import Empty

from ray.util.queue import Queue
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class ProgressReporter:
    """Shows step, losses and rate while ``trainer.fit()`` runs; does nothing when disabled."""

    def __init__(self, total_steps: int, enabled: bool = True):
        self.enabled = enabled
        self.total = total_steps
        self.queue = Queue(maxsize=1000) if enabled else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        columns = [TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                   TimeRemainingColumn()]
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task("train", total=self.total, stats="starting Ray workers...")
            while not self._stop.is_set():
                try:
                    update = self.queue.get(timeout=0.5)
                except Empty:
                    continue
                stats = (f"W {update.get('wasserstein_estimate', float('nan')):+.3f}  "
                         f"D {update.get('loss/critic', float('nan')):+.3f}  "
                         f"G {update.get('loss/generator', float('nan')):+.3f}  "
                         f"{update.get('throughput/images_per_s', 0):.0f} img/s")
                bar.update(task, completed=update["step"], stats=stats)

    def __enter__(self) -> "ProgressReporter":
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
