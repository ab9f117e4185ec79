"""How every stage shows its progress: a rich bar on a terminal, else a plain line now and then.

One `StageProgress` per stage run, counting towards a known total: train's steps, prepare's
shards written, tune's finished trials, evaluate's samples drawn and reference features.

* stdout a terminal: a rich progress bar, redrawn in place.
* stdout a file, a pipe or a CI log: one plain line at most every PLAIN_EVERY_FRACTION of the
  total or every PLAIN_EVERY_S seconds, whichever comes first (`Throttle`), and one as the
  total is reached::

      train: step 150/1500 (10%)  W +0.123  D -0.456  G +0.789  420 img/s  ETA 0:02:31

Work done in Ray tasks and actors (train's rank 0, prepare's write tasks) reaches the driver
through `QueueFeed`: a Ray queue they put updates in, read by a thread on the driver.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import threading
import time
from collections.abc import Callable
from queue import Empty
from typing import TextIO

PLAIN_EVERY_FRACTION = 0.1
PLAIN_EVERY_S = 30.0


class Throttle:
    """When a plain progress line is due: ``fraction`` of ``total`` more done since the last line,
    or ``seconds`` passed since it, whichever comes first; and once when ``total`` is reached."""

    def __init__(self, total: int, fraction: float = PLAIN_EVERY_FRACTION, seconds: float = PLAIN_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.fraction, self.seconds, self.clock = max(total, 1), fraction, seconds, clock
        self._done, self._at = 0, clock()

    def due(self, done: int) -> bool:
        """Whether the update to ``done`` gets a line (if it does, it counts as the last line)."""
        now = self.clock()
        finished = done >= self.total > self._done
        if not (finished or done - self._done >= self.fraction * self.total or now - self._at >= self.seconds):
            return False
        self._done, self._at = done, now
        return True


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class StageProgress:
    """Progress of one stage run towards ``total`` (``what``: the noun counted, e.g. "step").

    ``update(done, **fields)`` (or ``advance(n, **fields)``) from any driver thread;
    ``describe(fields)`` is the text shown after the count (losses, rates). Disabled, it shows
    nothing. A context manager: the bar is drawn between enter and exit.
    """

    def __init__(self, stage: str, total: int, what: str, *, enabled: bool = True,
                 describe: Callable[[dict], str] | None = None, stream: TextIO | None = None,
                 terminal: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.stage, self.total, self.what, self.enabled = stage, total, what, enabled
        self.describe, self.clock = describe, clock
        self.initial = ""  # the text a terminal's bar shows before the first update
        self.stream = stream if stream is not None else sys.stdout
        self.terminal = is_terminal(self.stream) if terminal is None else terminal
        self.done = 0
        self._throttle = Throttle(total, clock=clock)
        self._lock = threading.Lock()
        self._started = clock()
        self._first: tuple[float, int] | None = None  # (time, done) of the first update past 0: the rate's baseline
        self._bar = self._task = None

    def __enter__(self) -> StageProgress:
        self._started = self.clock()
        if self.enabled and self.terminal:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn(self.stage), BarColumn(), MofNCompleteColumn(), TextColumn(self.what),
                                 TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                                 console=Console(file=self.stream), transient=False)
            self._task = self._bar.add_task(self.stage, total=self.total, stats=self.initial)
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def advance(self, n: int = 1, **fields) -> None:
        with self._lock:
            done = self.done + n
        self.update(done, **fields)

    def update(self, done: int, **fields) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.done = done
            now = self.clock()
            if self._first is None and done > 0:
                self._first = (now, done)
            text = self.describe(fields) if self.describe else ""
            if self._bar is not None:
                self._bar.update(self._task, completed=done, stats=text)
            elif not self.terminal and self._throttle.due(done):
                print(self.line(done, text, now), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A line of its own (``stage: text``), above the bar on a terminal: what the stage waits for."""
        if not self.enabled:
            return
        with self._lock:
            if self._bar is not None:
                self._bar.console.print(f"{self.stage}: {text}", markup=False, highlight=False)
            else:
                print(f"{self.stage}: {text}", file=self.stream, flush=True)

    def line(self, done: int, text: str, now: float) -> str:
        """The plain line: stage, count, share of the total, the stage's text, time left."""
        count = f"{self.stage}: {self.what} {done}/{self.total} ({100 * done / max(self.total, 1):.0f}%)"
        return "  ".join(part for part in (count, text, f"ETA {self._eta(done, now)}") if part)

    def _eta(self, done: int, now: float) -> str:
        if done >= self.total:
            return _duration(0)
        since, base = self._first if self._first and done > self._first[1] else (self._started, 0)
        if done <= base or now <= since:
            return "?"
        return _duration((self.total - done) * (now - since) / (done - base))


class QueueFeed:
    """A Ray queue that remote code puts progress updates in, and the driver thread that passes them
    to ``progress``: ``{"done": N, **fields}`` sets the count, ``{"advance": n, **fields}`` adds to it,
    ``{"note": text}`` prints a line of its own.

    Without progress (disabled) there is no queue (``queue`` is None) and nothing starts.
    """

    def __init__(self, progress: StageProgress):
        from ray.util.queue import Queue

        self.progress = progress
        # No CPU: the stage's tasks and workers may hold every one.
        self.queue = Queue(maxsize=1000, actor_options={"num_cpus": 0}) if progress.enabled else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                update = dict(self.queue.get(timeout=0.5))
            except Empty:
                continue
            self._apply(update)
        # What came in before the stage returned (unless the queue's actor is gone: Ray stopping).
        with contextlib.suppress(Exception):
            while not self.queue.empty():
                self._apply(dict(self.queue.get_nowait()))

    def _apply(self, update: dict) -> None:
        if "note" in update:
            self.progress.note(update["note"])
        elif "done" in update:
            self.progress.update(update.pop("done"), **update)
        else:
            self.progress.advance(update.pop("advance", 1), **update)

    def __enter__(self) -> QueueFeed:
        self.progress.__enter__()
        if self.queue is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.progress.__exit__(*exc)


def train_stats(update: dict) -> str:
    """Train's text after the step count: the critic gap, both losses, the rate.

    The gap is labelled `W` only when it estimates W1 (wgan, wgan-gp); under gan or hinge the
    step reports it as `critic_gap`, and the line says what it is: D(real)-D(fake).
    """
    if "critic_gap" in update:
        gap = f"D(real)-D(fake) {update['critic_gap']:+.3f}"
    else:
        gap = f"W {update.get('wasserstein_estimate', float('nan')):+.3f}"
    return (f"{gap}  "
            f"D {update.get('loss/critic', float('nan')):+.3f}  "
            f"G {update.get('loss/generator', float('nan')):+.3f}  "
            f"{update.get('throughput/images_per_s', 0):.0f} img/s")


def train_progress(total_steps: int, enabled: bool = True) -> QueueFeed:
    """A training run's progress, fed by rank 0 through the returned feed's ``queue``."""
    progress = StageProgress("train", total_steps, "step", enabled=enabled, describe=train_stats)
    progress.initial = "starting Ray workers..."
    return QueueFeed(progress)
