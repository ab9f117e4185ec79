"""Rank 0's machine in the training run: CPU, memory, disk, network and GPU use, logged by MLflow's own
system-metrics monitor.

`SystemMetricsMonitor` is what ``mlflow.start_run(log_system_metrics=True)`` starts; the stages log
through ``MlflowClient``, so rank 0 starts one on the run's id. It samples in a thread of its own
every SAMPLING_INTERVAL_S seconds and logs ``system/cpu_utilization_percentage``,
``system/system_memory_usage_megabytes``, ``system/system_memory_usage_percentage``,
``system/disk_*``, ``system/network_*`` and, where NVIDIA's NVML bindings are installed
(``nvidia-ml-py``: ``pip install 'wganctl[gpu]'``) and a GPU is present,
``system/gpu_0_utilization_percentage``, ``system/gpu_0_memory_usage_megabytes``, ... . The metrics'
step counts samples (0, 1, ...) and goes on across restarts and resumes; MLflow's own variables
(``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``, ...) still apply.

10 s: a sample is a few psutil (and NVML) reads and one MLflow request, on another thread, six times
a minute: `benchmarks/bench_train.py --system-metrics` measures the step with and without it.

MLflow's monitor logs a sample only once an interval has passed; ours logs one more as it stops,
the machine over the last (partial) interval, so a run shorter than an interval still has one.
As with MLflow's own monitor, a monitor's first CPU reading is 0 (psutil's first reading in a
thread); its memory readings are real.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)

SAMPLING_INTERVAL_S: float | None = 10.0  # None: no system metrics (the benchmark's "off")
STOP_TIMEOUT_S = 10.0  # at most this long at the end of training (a tracking server that does not answer)


def _monitor_class():
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class LastSampleMonitor(SystemMetricsMonitor):
        """MLflow's monitor, which also logs a last sample when it stops: the machine since its
        previous sample (psutil's CPU reading is per thread, so it is taken on the monitor's own)."""

        def monitor(self) -> None:
            super().monitor()
            try:
                for part in self.monitors:
                    part.clear_metrics()  # the interval's opening sample: the one taken now covers it
                self.collect_metrics()
                self.publish_metrics(self.aggregate_metrics())
            except Exception:  # the machine's figures never fail a training run
                logger.warning("could not log the last system-metrics sample", exc_info=True)

    return LastSampleMonitor


class SystemMetrics:
    """MLflow's system-metrics monitor of this machine for run ``run_id``: `start`, then `stop`.

    Neither waits on MLflow: the monitor is made on a thread (it asks the run for its last
    system step), and `stop` gives it at most STOP_TIMEOUT_S. A failure is a warning in the
    worker's log, never the run's failure.
    """

    def __init__(self, run_id: str, tracking_uri: str, interval_s: float):
        self.run_id, self.tracking_uri, self.interval_s = run_id, tracking_uri, interval_s
        self.monitor = None
        self._opening: threading.Thread | None = None

    def start(self) -> None:
        self._opening = threading.Thread(target=self._open, daemon=True, name="SystemMetricsStart")
        self._opening.start()

    def _open(self) -> None:
        try:
            monitor = _monitor_class()(self.run_id, sampling_interval=self.interval_s, resume_logging=True,
                                       tracking_uri=self.tracking_uri)
            monitor.start()
            self.monitor = monitor
        except Exception:  # the machine's figures never fail a training run
            logger.warning("could not start MLflow's system-metrics monitor", exc_info=True)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop sampling; the monitor logs its last sample (at most ``timeout`` s)."""
        if self._opening is None:
            return
        closing = threading.Thread(target=self._close, args=(self._opening, timeout), daemon=True,
                                   name="SystemMetricsStop")
        self._opening = None
        closing.start()
        closing.join(timeout)

    def _close(self, opening: threading.Thread, timeout: float) -> None:
        opening.join(timeout)
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            monitor.finish()  # joins the monitor's thread, then sends what it logged
