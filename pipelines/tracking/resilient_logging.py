"""Rank 0's MLflow client, made to keep training through a tracking-server outage.

With a remote tracking server (`wganctl server`, infra/mlflow) the network is
part of the training loop, and MLflow alone handles an outage badly there:
`log_batch(synchronous=False)` retries in a thread pool and, once its HTTP
retries are spent (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7 with backoff: about four
minutes), drops the batch with one error line per batch; `log_image`,
`log_metric` and `set_tag` are synchronous, so they block the training step
for those minutes and then raise: the worker fails, and Ray Train restarts it
from its last checkpoint until `max_failures` is spent and the run fails.

`BufferedMlflowClient` takes the calls the worker makes (the same signatures
as `MlflowClient`), keeps them in order in a bounded queue, and sends them from
one background thread. A send that fails stays at the head of the queue and is
retried every ``retry_interval_s``; client errors (4xx: a bad value, a deleted
run) are not retried but dropped and counted. An outage is reported once, as a
`TrackingOutageWarning`, when the first send fails or has hung for
``stall_warning_s``. If the queue overflows (``max_pending`` calls, or
``max_pending_images`` grids), the oldest metric batches and grids are dropped. `close()` waits for the queue to drain and writes the
outcome into the run: the tag ``wganctl.tracking_outage`` (outages and their
length) and, only when something was dropped, ``wganctl.tracking_lost`` (which
steps and grids). What is still queued when its timeout runs out (a failing
worker closes with a short one) is given up and named in ``wganctl.tracking_lost``
too, which is then sent ahead of it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

OUTAGE_TAG = "wganctl.tracking_outage"
LOST_TAG = "wganctl.tracking_lost"
MAX_METRICS_PER_REQUEST = 1000  # MLflow's log_batch limit
# What close() allows the outcome tags beyond its timeout: one small request, and the only
# record in the run of what was lost.
OUTCOME_GRACE_S = 5.0


class TrackingOutageWarning(RuntimeWarning):
    """The MLflow tracking server is unreachable; training goes on and logging is buffered."""


@dataclass
class _Item:
    kind: str  # "metrics", "batch" (params/tags), "image", "tag"
    run_id: str
    metrics: list[Metric] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    tags: list[RunTag] = field(default_factory=list)
    image: np.ndarray | None = None
    image_kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "image":
            return str(self.image_kwargs.get("artifact_file") or self.image_kwargs.get("key"))
        steps = sorted({m.step for m in self.metrics})
        if not steps:
            return self.kind
        return f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"


class BufferedMlflowClient:
    """Drop-in for the `MlflowClient` calls of a training worker; never blocks, never raises on outages."""

    def __init__(self, tracking_uri: str | MlflowClient | None = None, *, max_pending: int = 5000,
                 max_pending_images: int = 50, retry_interval_s: float = 5.0, stall_warning_s: float = 30.0):
        self.client = tracking_uri if isinstance(tracking_uri, MlflowClient) else MlflowClient(tracking_uri)
        self.max_pending = max_pending
        self.max_pending_images = max_pending_images  # grids are the large items: bound the memory they hold
        self.retry_interval_s = retry_interval_s
        self.stall_warning_s = stall_warning_s
        self._queue: collections.deque[_Item] = collections.deque()
        self._in_flight = 0  # items at the head of the queue being sent right now
        self._attempt_started: float | None = None
        self._outage_started: float | None = None
        self._warned = False
        self._outages: list[float] = []
        self._lost_metric_steps: dict[str, set[int]] = collections.defaultdict(set)
        self._lost_images: dict[str, list[str]] = collections.defaultdict(list)
        self._rejected: dict[str, list[str]] = collections.defaultdict(list)
        self._unsent: dict[str, list[_Item]] = collections.defaultdict(list)  # given up by close()
        self._unsent_after_s = 0.0
        self._runs: set[str] = set()
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._send_forever, name="wganctl-mlflow-sender", daemon=True)
        self._thread.start()

    # --- the MlflowClient calls train_worker makes ---------------------------------------------

    def log_batch(self, run_id: str, metrics: Sequence[Metric] = (), params: Sequence[Param] = (),
                  tags: Sequence[RunTag] = (), synchronous: bool | None = None) -> None:
        kind = "metrics" if not params and not tags else "batch"
        self._put(_Item(kind, run_id, metrics=list(metrics), params=list(params), tags=list(tags)))

    def log_metric(self, run_id: str, key: str, value: float, timestamp: int | None = None,
                   step: int | None = None, synchronous: bool | None = None) -> None:
        metric = Metric(key, value, timestamp or int(time.time() * 1000), step or 0)
        self._put(_Item("metrics", run_id, metrics=[metric]))

    def log_image(self, run_id: str, image: Any, artifact_file: str | None = None, **kwargs: Any) -> None:
        kwargs.pop("synchronous", None)
        picture = np.array(image, copy=True)  # the caller may reuse its buffer
        self._put(_Item("image", run_id, image=picture, image_kwargs={"artifact_file": artifact_file, **kwargs}))

    def set_tag(self, run_id: str, key: str, value: Any, synchronous: bool | None = None) -> None:
        self._put(_Item("tag", run_id, tags=[RunTag(key, str(value))]))

    # --- draining ----------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is sent (or dropped); False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue:
                self._check_stall()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 1.0) if remaining is not None else 1.0)
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
            return not self._queue
        deadline = time.monotonic() + timeout
        drained = self.flush(timeout)
        with self._cond:
            if not drained:  # give up the calls not started; one being sent may still land
                given_up = [self._queue.pop() for _ in range(len(self._queue) - self._in_flight)][::-1]
                for item in given_up:
                    self._unsent[item.run_id].append(item)
                self._unsent_after_s = timeout
            for run_id in sorted(self._runs):
                for key, value in self._outcome_tags(run_id).items():
                    self._queue.append(_Item("tag", run_id, tags=[RunTag(key, value)]))
            self._cond.notify_all()
        self.flush(max(deadline - time.monotonic(), OUTCOME_GRACE_S))
        with self._cond:
            self._closing = True
            left = list(self._queue)
            self._cond.notify_all()
        unsent = [item for items in self._unsent.values() for item in items] + left
        if unsent:
            warnings.warn(f"MLflow server {self.client.tracking_uri} did not take everything within {timeout:g} s: "
                          f"{len(unsent)} logging calls were not sent ({_summary(unsent)})",
                          TrackingOutageWarning, stacklevel=2)
        self._thread.join(timeout=5)
        return not unsent

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    # --- internals ---------------------------------------------------------------------------------

    def _put(self, item: _Item) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("BufferedMlflowClient is closed")
            self._runs.add(item.run_id)
            self._queue.append(item)
            while len(self._queue) - self._in_flight > self.max_pending and self._drop_oldest(("metrics", "image")):
                pass
            if item.kind == "image":
                while self._waiting("image") > self.max_pending_images and self._drop_oldest(("image",)):
                    pass
            self._check_stall()
            self._cond.notify_all()

    def _waiting(self, kind: str) -> int:
        return sum(1 for index in range(self._in_flight, len(self._queue)) if self._queue[index].kind == kind)

    def _drop_oldest(self, kinds: tuple[str, ...]) -> bool:
        for index in range(self._in_flight, len(self._queue)):
            item = self._queue[index]
            if item.kind in kinds:
                del self._queue[index]
                self._record_loss(item)
                return True
        return False

    def _record_loss(self, item: _Item) -> None:
        if item.kind == "image":
            self._lost_images[item.run_id].append(item.describe())
        else:
            self._lost_metric_steps[item.run_id].update(m.step for m in item.metrics)

    def _check_stall(self) -> None:
        started = self._attempt_started
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

    def _next_request(self) -> list[_Item]:
        """The head item, with the metric batches behind it merged into one request."""
        head = self._queue[0]
        if head.kind != "metrics":
            return [head]
        items, count = [head], len(head.metrics)
        for item in list(self._queue)[1:]:
            if item.kind != "metrics" or item.run_id != head.run_id or count + len(item.metrics) > MAX_METRICS_PER_REQUEST:
                break
            items.append(item)
            count += len(item.metrics)
        return items

    def _send(self, items: list[_Item]) -> None:
        head = items[0]
        if head.kind == "image":
            self.client.log_image(head.run_id, head.image, **head.image_kwargs)
        else:
            self.client.log_batch(head.run_id, metrics=[m for item in items for m in item.metrics],
                                  params=head.params, tags=head.tags, synchronous=True)

    def _send_forever(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                items = self._next_request()
                self._in_flight = len(items)
                started = self._attempt_started = time.monotonic()
            error = None
            try:
                self._send(items)
            except Exception as err:  # noqa: BLE001 - any failure to reach the server is an outage
                error = err
            with self._cond:
                self._attempt_started = None
                self._in_flight = 0
                if error is not None and not _is_rejection(error):
                    self._report_outage(_one_line(error), started)
                    retry_at = time.monotonic() + self.retry_interval_s
                    while not self._closing and time.monotonic() < retry_at:
                        self._cond.wait(retry_at - time.monotonic())
                    continue
                for _ in items:
                    self._queue.popleft()
                if error is not None:
                    self._rejected[items[0].run_id].append(f"{items[0].describe()}: {_one_line(error)}")
                    logger.warning("MLflow rejected %s: %s", items[0].describe(), _one_line(error))
                if self._outage_started is not None:
                    self._outages.append(time.monotonic() - self._outage_started)
                    logger.info("MLflow server reachable again after %.0f s; sending %d buffered calls",
                                self._outages[-1], len(self._queue))
                    self._outage_started = None
                    self._warned = False
                self._cond.notify_all()

    def _outcome_tags(self, run_id: str) -> dict[str, str]:
        tags = {}
        outages = self._outages + ([time.monotonic() - self._outage_started] if self._outage_started else [])
        steps = sorted(self._lost_metric_steps.get(run_id, ()))
        images = self._lost_images.get(run_id, [])
        rejected = self._rejected.get(run_id, [])
        unsent = self._unsent.get(run_id, [])
        if outages:
            lost = "some logging was lost, see wganctl.tracking_lost" if steps or images or unsent else "nothing was lost"
            tags[OUTAGE_TAG] = (f"{len(outages)} tracking-server outage(s) during training, "
                                f"{sum(outages):.0f} s in total; {lost}")
        if steps or images or rejected or unsent:
            parts = []
            if steps:
                parts.append(f"metrics of {len(steps)} steps ({_ranges(steps)})")
            if images:
                parts.append(f"{len(images)} sample grids ({', '.join(images[:20])}{', ...' if len(images) > 20 else ''})")
            if steps or images:
                parts[-1] += " dropped: the queue of logging calls was full during an outage"
            if rejected:
                parts.append(f"{len(rejected)} calls rejected by the server ({'; '.join(rejected[:3])})")
            if unsent:
                parts.append(f"{_summary(unsent)} not sent: still queued when closing gave up after "
                             f"{self._unsent_after_s:g} s")
            tags[LOST_TAG] = "; ".join(parts)[:4900]
        return tags


def _summary(items: list[_Item]) -> str:
    """What some logging calls held, e.g. 'metrics of 2 steps (9-10), 1 sample grids (samples/step_000010.png)'."""
    steps = sorted({m.step for item in items for m in item.metrics})
    grids = [item.describe() for item in items if item.kind == "image"]
    keys = [entry.key for item in items for entry in (*item.tags, *item.params)]
    parts = []
    if steps:
        parts.append(f"metrics of {len(steps)} steps ({_ranges(steps)})")
    if grids:
        parts.append(f"{len(grids)} sample grids ({', '.join(grids[:20])}{', ...' if len(grids) > 20 else ''})")
    if keys:
        parts.append(f"tags/params {', '.join(keys[:10])}{', ...' if len(keys) > 10 else ''}")
    return ", ".join(parts)


def _is_rejection(error: Exception) -> bool:
    """A client error (4xx other than 408/429) that no retry will fix."""
    status = None
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
    elif getattr(error, "response", None) is not None:
        status = getattr(error.response, "status_code", None)
    return status is not None and 400 <= status < 500 and status not in (408, 429)


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def _ranges(steps: list[int]) -> str:
    """[1, 2, 3, 7, 8] -> '1-3, 7-8'."""
    runs, start, prev = [], steps[0], steps[0]
    for step in steps[1:] + [None]:
        if step is not None and step == prev + 1:
            prev = step
            continue
        runs.append(f"{start}-{prev}" if prev != start else str(start))
        if step is not None:
            start = prev = step
    text = ", ".join(runs)
    return text if len(text) < 400 else text[:400] + ", ..."
