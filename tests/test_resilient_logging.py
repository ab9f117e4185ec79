"""BufferedMlflowClient against a real tracking server (`wganctl server`: MLflow's own
server, sqlite database and artifacts in tmp_path) that is stopped with SIGTERM in
the middle of logging and restarted on the same port and database."""

from __future__ import annotations

import re
import time
import warnings

import numpy as np
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipelines.tracking.resilient_logging import LOST_TAG, OUTAGE_TAG, BufferedMlflowClient, TrackingOutageWarning
from tests.processes import TrackingServer, port_open

pytestmark = pytest.mark.slow

KEYS = ("loss/critic", "loss/generator", "wasserstein_estimate")


@pytest.fixture
def tracking_server(tmp_path, monkeypatch):
    # One attempt per send: the buffer's own retry loop, not MLflow's 4-minute backoff, bridges the outage.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    server = TrackingServer(tmp_path / "tracking").start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        assert not port_open(server.port), "the MLflow server outlived `wganctl server`"


def _expand_ranges(text: str) -> set[int]:
    """'1-3, 7' -> {1, 2, 3, 7}."""
    steps: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        steps.update(range(int(low), int(high or low) + 1))
    return steps


@pytest.mark.timeout(180)
def test_logging_survives_a_tracking_server_outage(tracking_server):
    """SIGTERM the server mid-run, keep logging, restart it on the same port and database:
    a roomy client sends every step and grid; a tight one (max_pending=4) names what it dropped."""
    client = MlflowClient(tracking_server.uri)
    experiment = client.create_experiment("outage")
    roomy_run = client.create_run(experiment).info.run_id
    tight_run = client.create_run(experiment).info.run_id
    roomy = BufferedMlflowClient(tracking_server.uri, retry_interval_s=0.5, stall_warning_s=10)
    tight = BufferedMlflowClient(tracking_server.uri, max_pending=4, retry_interval_s=0.5, stall_warning_s=10)
    picture = np.random.default_rng(0).integers(0, 255, (58, 58), dtype=np.uint8)
    step, slowest = 0, 0.0

    def log_step() -> None:
        """What rank 0 logs at a step: a sample grid every 5 steps, and a batch of metrics."""
        nonlocal step, slowest
        step += 1
        now = int(time.time() * 1000)
        for logger, run_id in ((roomy, roomy_run), (tight, tight_run)):
            started = time.perf_counter()
            if step % 5 == 0:
                logger.log_image(run_id, picture, artifact_file=f"samples/step_{step:06d}.png")
            logger.log_batch(run_id, metrics=[Metric(key, float(step), now, step) for key in KEYS], synchronous=False)
            slowest = max(slowest, time.perf_counter() - started)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(9):
            log_step()
        assert roomy.flush(60) and tight.flush(60)

        tracking_server.stop()  # SIGTERM: step 10's grid is the first call to fail, then metric batches
        for _ in range(10):
            log_step()
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while len([w for w in caught if issubclass(w.category, TrackingOutageWarning)]) < 2:
            assert time.monotonic() < deadline, "the outage was never reported"
            time.sleep(0.2)
        assert roomy.pending > 0

        tracking_server.start()  # same port, same database, same artifact directory
        while not tracking_server.healthy():
            assert tracking_server.process.popen.poll() is None, tracking_server.process.tail()
            log_step()  # training goes on while the server is down
            time.sleep(0.3)
        for _ in range(5):
            log_step()
        assert roomy.close(timeout=120) and tight.close(timeout=120)

    outage_warnings = [w for w in caught if issubclass(w.category, TrackingOutageWarning)]
    assert len(outage_warnings) == 2, [str(w.message) for w in outage_warnings]  # once per client
    assert slowest < 0.5, f"a logging call blocked the training loop for {slowest:.2f} s"
    everything, grids = set(range(1, step + 1)), {s for s in range(1, step + 1) if s % 5 == 0}

    # The roomy client lost nothing: every step and every grid, and the run says there was an outage.
    for key in KEYS:
        assert tracking_server.metric_steps(roomy_run, key) == sorted(everything), key
    assert tracking_server.artifact_names(roomy_run, "samples") == [f"step_{s:06d}.png" for s in sorted(grids)]
    tags = client.get_run(roomy_run).data.tags
    assert tags[OUTAGE_TAG].startswith("1 tracking-server outage(s)") and "nothing was lost" in tags[OUTAGE_TAG]
    assert LOST_TAG not in tags

    # The tight client had to drop calls: the run names exactly the steps it lacks.
    tags = client.get_run(tight_run).data.tags
    lost = tags[LOST_TAG]
    named = re.search(r"metrics of (\d+) steps \(([^)]*)\)", lost)
    assert named, lost
    lost_steps = _expand_ranges(named.group(2))
    assert len(lost_steps) == int(named.group(1)) > 0
    for key in KEYS:
        logged = set(tracking_server.metric_steps(tight_run, key))
        assert logged | lost_steps == everything and not logged & lost_steps, key
    lost_grids = re.search(r"(\d+) sample grids", lost)
    logged_grids = tracking_server.artifact_names(tight_run, "samples")
    assert len(logged_grids) + (int(lost_grids.group(1)) if lost_grids else 0) == len(grids)
    assert "some logging was lost" in tags[OUTAGE_TAG]
