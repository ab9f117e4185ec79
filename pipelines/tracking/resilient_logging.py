"""Rank 0's MLflow client, made to keep training through a tracking-server outage.

MLflow alone fails a training loop there: `log_image`, `log_metric` and `set_tag`
block for its HTTP retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES: about four minutes)
and then raise, failing the worker; `log_batch(synchronous=False)` drops the batch.

`BufferedMlflowClient` queues the worker's calls (`MlflowClient`'s signatures) and
replays them in order through an `MlflowClient` from one thread, adding what MLflow lacks:

* retrying across an outage: a failed call goes back to the head of the queue and is
  retried every ``retry_interval_s`` (a 4xx rejection is not: no retry fixes it). Each
  outage warns once (`TrackingOutageWarning`): at a failure, or a call hung ``stall_warning_s``;
* bounded loss: past ``max_pending`` waiting calls (``max_pending_images`` grids) the
  oldest metric batches and grids are dropped, never params or tags;
* tags that record it: `close()` writes OUTAGE_TAG (outages, their length) and, when
  something was dropped, rejected or still queued at its timeout, LOST_TAG (which steps, grids).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from wgan.errors import first_line
from pipelines.tracking import run_tags

logger = logging.getLogger(__name__)

OUTAGE_TAG = run_tags.TRACKING_OUTAGE
LOST_TAG = run_tags.TRACKING_LOST
# What close() allows the outcome tags beyond its timeout: one small request, and the only
# record in the run of what was lost.
OUTCOME_GRACE_S = 5.0


class TrackingOutageWarning(RuntimeWarning):
    """The MLflow tracking server is unreachable; training goes on and logging is buffered."""


@dataclass
class _Call:
    """A queued `log_image(run_id, **image)` if ``image``, else `log_batch(run_id, metrics, params, tags)`."""
    run_id: str
    metrics: Sequence[Metric] = ()
    params: Sequence[Param] = ()
    tags: Sequence[RunTag] = ()
    image: dict[str, Any] | None = None

    @property
    def kind(self) -> str:  # "metrics" and "image" calls may be dropped, params and tags ("other") never
        return "image" if self.image else "other" if self.params or self.tags else "metrics"

    @property
    def grid(self) -> str:
        return str(self.image.get("artifact_file") or self.image.get("key"))


@dataclass
class _Losses:
    """One run's record for LOST_TAG."""
    dropped_steps: set[int] = field(default_factory=set)
    dropped_grids: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    unsent: list[_Call] = field(default_factory=list)


class BufferedMlflowClient:
    """Drop-in for the `MlflowClient` calls of a training worker; never blocks, never raises on outages."""

    def __init__(self, tracking_uri: str | MlflowClient | None = None, *, max_pending: int = 5000,
                 max_pending_images: int = 50, retry_interval_s: float = 5.0, stall_warning_s: float = 30.0):
        self.client = tracking_uri if isinstance(tracking_uri, MlflowClient) else MlflowClient(tracking_uri)
        self.max_pending = max_pending
        self.max_pending_images = max_pending_images  # grids are the large items: bound the memory they hold
        self.retry_interval_s = retry_interval_s
        self.stall_warning_s = stall_warning_s
        self._queue: collections.deque[_Call] = collections.deque()
        self._sending: list[_Call] = []  # taken off the queue by the sender thread, back at its head if they fail
        self._sending_since: float | None = None
        self._outage_started: float | None = None
        self._warned = False
        self._outages: list[float] = []
        self._losses: dict[str, _Losses] = {}  # every run logged to: each gets its outcome tags
        self._gave_up_after_s = 0.0
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._send_forever, name="wganctl-mlflow-sender", daemon=True)
        self._thread.start()

    # --- the MlflowClient calls train_worker makes ---------------------------------------------

    def log_batch(self, run_id: str, metrics: Sequence[Metric] = (), params: Sequence[Param] = (),
                  tags: Sequence[RunTag] = (), synchronous: bool | None = None) -> None:
        self._put(_Call(run_id, list(metrics), list(params), list(tags)))

    def log_metric(self, run_id: str, key: str, value: float, timestamp: int | None = None,
                   step: int | None = None, synchronous: bool | None = None) -> None:
        stamp = timestamp if timestamp is not None else get_current_time_millis()  # now, not when it is sent
        self._put(_Call(run_id, metrics=[Metric(key, value, stamp, step or 0)]))

    def log_image(self, run_id: str, image: Any, artifact_file: str | None = None, **kwargs: Any) -> None:
        kwargs.pop("synchronous", None)
        picture = np.array(image, copy=True)  # the caller may reuse its buffer
        self._put(_Call(run_id, image={"image": picture, "artifact_file": artifact_file, **kwargs}))

    def set_tag(self, run_id: str, key: str, value: Any, synchronous: bool | None = None) -> None:
        self._put(_Call(run_id, tags=[RunTag(key, str(value))]))

    # --- draining ----------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is sent (or dropped); False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._sending:
                self._check_stall()  # a hung request is noticed here: the sender thread is stuck in it
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 1.0))
        return True

    def sync(self, timeout: float) -> bool:
        """Wait at most ``timeout`` s for what is queued to be sent; during an outage, not at all
        (the queue is kept and retried, and training must not stall on a server that is down)."""
        with self._cond:
            down = self._outage_started is not None
        return not down and self.flush(timeout)

    def close(self, timeout: float = 300.0) -> bool:
        """Send what is queued, then record outages and losses in each run's tags; True if nothing is left.

        What is not sent within ``timeout`` is given up and named in the lost tag, which then
        goes next (behind a send in progress), with at least OUTCOME_GRACE_S to get through.
        """
        if self._closing:
            return not self.pending
        deadline = time.monotonic() + timeout
        drained = self.flush(timeout)
        with self._cond:
            if not drained:  # give up the calls not started; one being sent may still land
                for call in self._queue:
                    self._lost(call.run_id).unsent.append(call)
                self._queue.clear()
                self._gave_up_after_s = timeout
            for run_id in sorted(self._losses):
                tags = self._outcome_tags(run_id)
                if tags:
                    self._queue.append(_Call(run_id, tags=[RunTag(k, v) for k, v in tags.items()]))
            self._cond.notify_all()
        self.flush(max(deadline - time.monotonic(), OUTCOME_GRACE_S))
        with self._cond:
            self._closing = True
            unsent = [call for losses in self._losses.values() for call in losses.unsent]
            unsent += self._sending + list(self._queue)
            self._cond.notify_all()
        if unsent:
            warnings.warn(f"MLflow server {self.client.tracking_uri} did not take everything within {timeout:g} s: "
                          f"{len(unsent)} logging calls were not sent ({_summary_of(unsent)})",
                          TrackingOutageWarning, stacklevel=2)
        self._thread.join(timeout=5)
        return not unsent

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._sending)

    # --- internals ---------------------------------------------------------------------------------

    def _put(self, call: _Call) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("BufferedMlflowClient is closed")
            self._lost(call.run_id)
            self._queue.append(call)
            self._trim()
            self._check_stall()
            self._cond.notify_all()

    def _lost(self, run_id: str) -> _Losses:
        return self._losses.setdefault(run_id, _Losses())

    def _trim(self) -> None:
        """Drop the oldest waiting metric batches and grids beyond the bounds."""
        extra = len(self._queue) - self.max_pending
        extra_grids = sum(1 for call in self._queue if call.image) - self.max_pending_images
        if extra <= 0 and extra_grids <= 0:
            return
        kept: collections.deque[_Call] = collections.deque()
        for call in self._queue:
            if call.kind == "other" or extra <= 0 and not (call.image and extra_grids > 0):
                kept.append(call)
            elif call.image:
                extra, extra_grids = extra - 1, extra_grids - 1
                self._lost(call.run_id).dropped_grids.append(call.grid)
            else:
                extra -= 1
                self._lost(call.run_id).dropped_steps.update(m.step for m in call.metrics)
        self._queue = kept

    def _check_stall(self) -> None:
        started = self._sending_since
        if started is not None and time.monotonic() - started > self.stall_warning_s:
            self._report_outage(f"no answer for {self.stall_warning_s:.0f} s", started)

    def _report_outage(self, reason: str, since: float) -> None:
        if self._outage_started is None:
            self._outage_started = since
        if not self._warned:
            self._warned = True
            warnings.warn(f"MLflow server {self.client.tracking_uri} unreachable ({reason}); training goes on, "
                          f"logging is buffered (up to {self.max_pending} calls) and retried every "
                          f"{self.retry_interval_s:g} s", TrackingOutageWarning, stacklevel=3)

    def _take(self) -> list[_Call]:
        """The head call and, if it is a metric batch, those of its run right behind it: one `log_batch`,
        which MlflowClient splits into requests within the server's limits."""
        calls = [self._queue.popleft()]
        while calls[0].kind == "metrics" and self._queue and self._queue[0].kind == "metrics" \
                and self._queue[0].run_id == calls[0].run_id:
            calls.append(self._queue.popleft())
        return calls

    def _send(self, calls: list[_Call]) -> None:
        head = calls[0]
        if head.image:
            self.client.log_image(head.run_id, **head.image)
        else:
            self.client.log_batch(head.run_id, metrics=[m for call in calls for m in call.metrics],
                                  params=head.params, tags=head.tags, synchronous=True)

    def _send_forever(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if self._closing:
                    return
                calls = self._sending = self._take()
                started = self._sending_since = time.monotonic()
            try:
                self._send(calls)
                error = None
            except Exception as err:  # noqa: BLE001 - any failure to reach the server is an outage
                error = err
            with self._cond:
                self._sending, self._sending_since = [], None
                if error is not None and not _is_rejection(error):
                    self._queue.extendleft(reversed(calls))
                    self._trim()
                    self._report_outage(first_line(error)[:300], started)
                    self._cond.wait_for(lambda: self._closing, self.retry_interval_s)
                    continue
                if error is not None:
                    what = _summary_of(calls)
                    self._lost(calls[0].run_id).rejected.append(f"{what}: {first_line(error)[:300]}")
                    logger.warning("MLflow rejected %s: %s", what, first_line(error)[:300])
                if self._outage_started is not None:
                    self._outages.append(time.monotonic() - self._outage_started)
                    logger.info("MLflow server reachable again after %.0f s; sending %d buffered calls",
                                self._outages[-1], len(self._queue))
                    self._outage_started, self._warned = None, False
                self._cond.notify_all()

    def _outcome_tags(self, run_id: str) -> dict[str, str]:
        losses = self._lost(run_id)
        outages = self._outages + ([time.monotonic() - self._outage_started] if self._outage_started else [])
        dropped = losses.dropped_steps or losses.dropped_grids
        parts = []
        if dropped:
            parts.append(f"{_summary(losses.dropped_steps, losses.dropped_grids)} dropped: "
                         "the queue of logging calls was full during an outage")
        if losses.rejected:
            parts.append(f"{len(losses.rejected)} calls rejected by the server ({'; '.join(losses.rejected[:3])})")
        if losses.unsent:
            parts.append(f"{_summary_of(losses.unsent)} not sent: still queued when closing gave up after "
                         f"{self._gave_up_after_s:g} s")
        tags = {LOST_TAG: "; ".join(parts)[:MAX_TAG_VAL_LENGTH]} if parts else {}
        if outages:
            lost = f"some logging was lost, see {LOST_TAG}" if dropped or losses.unsent else "nothing was lost"
            tags[OUTAGE_TAG] = (f"{len(outages)} tracking-server outage(s) during training, "
                                f"{sum(outages):.0f} s in total; {lost}")
        return tags


def _summary(steps: Iterable[int], grids: list[str], keys: Sequence[str] = ()) -> str:
    """E.g. 'metrics of 2 steps (9-10), 1 sample grids (samples/step_000010.png)'."""
    steps = sorted(set(steps))
    parts = [f"metrics of {len(steps)} steps ({_ranges(steps)})"] if steps else []
    if grids:
        parts.append(f"{len(grids)} sample grids ({', '.join(grids[:20])}{', ...' if len(grids) > 20 else ''})")
    if keys:
        parts.append(f"tags/params {', '.join(keys[:10])}{', ...' if len(keys) > 10 else ''}")
    return ", ".join(parts)


def _summary_of(calls: list[_Call]) -> str:
    return _summary((m.step for call in calls for m in call.metrics), [call.grid for call in calls if call.image],
                    [entry.key for call in calls for entry in (*call.tags, *call.params)])


def _is_rejection(error: Exception) -> bool:
    """A client error (4xx other than 408/429) that no retry will fix."""
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
    else:  # log_image's upload raises requests' HTTPError
        status = getattr(getattr(error, "response", None), "status_code", None)
    return status is not None and 400 <= status < 500 and status not in (408, 429)


def _ranges(steps: list[int]) -> str:
    """[1, 2, 3, 7, 8] -> '1-3, 7-8'."""
    runs, start = [], 0
    for i, step in enumerate(steps):
        if i + 1 == len(steps) or steps[i + 1] != step + 1:
            runs.append(f"{steps[start]}-{step}" if i > start else str(step))
            start = i + 1
    text = ", ".join(runs)
    return text if len(text) < 400 else text[:400] + ", ..."
