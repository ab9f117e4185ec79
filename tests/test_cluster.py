"""The pipeline on a real multi-node Ray cluster with token auth, tracked by a real `wganctl server`.

Everything here is a real process started by the test and stopped by its
process group: three `ray start --block` nodes on this machine (Ray's token
authentication on, the token shared through RAY_AUTH_TOKEN as KubeRay does it),
and `wganctl server` (MLflow's server: sqlite backend, artifacts served through
it). Stages reach the cluster the ways a user would: `wganctl prepare` as a
driver on this machine connected through Ray Client (ray://), `wganctl train` and
`train-classifier` in one `ray job submit` to the dashboard's job API, then
evaluate and tune through Ray Client: each runs as a task on the cluster, with
Ray's token and the tracking server's address from this machine.

Why three nodes: Ray Train places each CPU worker on a whole CPU, and Ray Data's
read tasks need a CPU of their own. Two one-CPU nodes and two workers leave no
CPU for reading, and the job waits forever; a third one-CPU node keeps one free
while the placement group's PACK strategy still has to put the workers on two
different nodes.

The client's side of a tracking-server outage (stopped and restarted mid-run) is
tests/test_resilient_logging.py.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.processes import (JOB_TIMEOUT_S, START_TIMEOUT_S, VENV_BIN, OwnedProcess, TrackingServer,
                             clean_env, free_port, port_open)

pytestmark = pytest.mark.slow


class LocalRayCluster:
    """A head and worker nodes from `ray start --block`, on this machine, with token authentication."""

    def __init__(self):
        # Ray's unix sockets live under --temp-dir and may not exceed 107 bytes: pytest's tmp_path is too deep.
        self.workdir = Path(tempfile.mkdtemp(prefix="wganctl-ray-"))
        self.token = secrets.token_hex(32)
        self.env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        self.gcs_port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
        self.nodes: list[OwnedProcess] = []

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def _start_node(self, name: str, *args: str) -> None:
        temp = self.workdir / name
        temp.mkdir(parents=True)
        self.nodes.append(OwnedProcess(
            [str(VENV_BIN / "ray"), "start", "--block", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats",
             f"--temp-dir={temp}", f"--dashboard-agent-listen-port={free_port()}", *args],
            self.env, self.workdir / f"{name}.log"))

    def start_head(self) -> None:
        self._start_node("head", "--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                         "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                         f"--ray-client-server-port={self.client_port}")

    def start_workers(self, count: int) -> None:
        for index in range(count):
            name = f"node{index + 2}"
            self._start_node(name, f"--address={self.gcs_address}", f"--resources={json.dumps({name: 1})}")

    def state(self, resource: str, **filters: str) -> list[dict]:
        """Ray's state API over the dashboard's REST endpoint (dead actors and finished jobs included)."""
        params = {"limit": 10000, "detail": "true"}
        if filters:
            params["filter_keys"], params["filter_predicates"], params["filter_values"] = (
                list(filters), ["="] * len(filters), list(filters.values()))
        response = requests.get(f"{self.dashboard}/api/v0/{resource}", params=params, timeout=30,
                                headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        return response.json()["data"]["result"]["result"]

    def wait_for_dashboard(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nodes[0].popen.poll() is not None:
                pytest.fail(f"ray head exited:\n{self.nodes[0].tail()}")
            try:
                self.state("nodes")
                return
            except (requests.RequestException, KeyError):
                time.sleep(0.5)
        pytest.fail(f"Ray dashboard not up after {timeout} s:\n{self.nodes[0].tail()}")

    def wait_for_client_server(self, timeout: float = START_TIMEOUT_S) -> None:
        """The head's Ray Client server listens a moment after its dashboard answers; a ray://
        command started before it is refused (`cluster.connect.check_address`), as a user's is."""
        deadline = time.monotonic() + timeout
        while not port_open(self.client_port):
            if time.monotonic() > deadline or self.nodes[0].popen.poll() is not None:
                pytest.fail(f"Ray Client server not listening after {timeout} s:\n{self.nodes[0].tail()}")
            time.sleep(0.25)

    def wait_for_nodes(self, count: int, timeout: float = START_TIMEOUT_S) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = [n for n in self.state("nodes") if n["state"] == "ALIVE"]
            if len(alive) >= count:
                return alive
            for node in self.nodes:
                if node.popen.poll() is not None:
                    pytest.fail(f"a ray node exited:\n{node.tail()}")
            time.sleep(0.5)
        pytest.fail(f"fewer than {count} Ray nodes after {timeout} s:\n" + "\n".join(n.tail(10) for n in self.nodes))

    def submit(self, entrypoint: list[str], env_vars: dict, timeout: float) -> tuple[str, str]:
        """`ray job submit` (waits and tails the logs); returns the submission id and its output."""
        submission_id = f"wganctl-test-{secrets.token_hex(4)}"
        result = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "submit", "--address", self.dashboard, "--submission-id", submission_id,
             "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", *entrypoint],
            env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"job {entrypoint[:2]} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        return submission_id, result.stdout + result.stderr

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, then the head
            node.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """Module-scoped: `wganctl server` takes half a minute to start on a busy 2-core machine."""
    server = TrackingServer(tmp_path_factory.mktemp("tracking")).start()
    try:
        yield server
    finally:
        server.stop()
        assert not port_open(server.port), "the MLflow server outlived `wganctl server`"


@pytest.mark.timeout(1200)
def test_pipeline_on_a_token_auth_ray_cluster_tracked_by_wganctl_server(tmp_path, tracking_server):
    shared = tmp_path / "shared"  # what every node sees: an s3:// bucket or a shared filesystem on a real cluster
    cluster = LocalRayCluster()
    try:
        cluster.start_head()
        cluster.wait_for_dashboard()
        cluster.wait_for_client_server()
        # Token auth is on: the dashboard's job API refuses a request without the token.
        assert requests.get(f"{cluster.dashboard}/api/jobs/", timeout=10).status_code == 401

        # prepare: a driver outside the cluster that connects through Ray Client (ray://, with
        # the cluster's token) and runs the stage as a task there; it needs only the head's CPU,
        # so it runs while the other nodes start.
        data = shared / "fmnist-28"
        prepare = OwnedProcess(
            [str(VENV_BIN / "wganctl"), "prepare", "fashion-mnist", "--size", "28", "--limit", "256",
             "--out", str(data), "--quiet", "--address", cluster.client_address],
            cluster.env, tmp_path / "prepare.log")
        cluster.start_workers(2)
        nodes = cluster.wait_for_nodes(3)
        assert prepare.popen.wait(timeout=JOB_TIMEOUT_S) == 0, prepare.tail()
        assert json.loads((data / "manifest.json").read_text())["count"] == 256
        prepare_tasks = cluster.state("tasks", name="prepare")  # the stage, run as a task by the client
        assert prepare_tasks and prepare_tasks[0]["state"] == "FINISHED", "prepare never ran on the cluster"
        tracking_server.wait_ready()

        checkpoints = shared / "checkpoints"
        # train: a job on the cluster, two workers, tracking through the server; then, in the same
        # job (one driver start-up fewer), the evaluate stage's classifier (train-classifier).
        train_args = ["wganctl", "train", "--data", str(data), "--width", "8", "--steps", "4", "--batch", "16",
                      "--n-critic", "1", "--workers", "2", "--log-every", "2", "--sample-every", "2",
                      "--checkpoint-every", "2", "--storage-path", str(checkpoints), "--quiet"]
        classifier_args = ["wganctl", "train-classifier", str(data), "--epochs", "1", "--quiet"]
        submission_id, output = cluster.submit(
            ["sh", "-c", f"{shlex.join(train_args)} && {shlex.join(classifier_args)}"],
            env_vars={"MLFLOW_TRACKING_URI": tracking_server.uri}, timeout=JOB_TIMEOUT_S)
        found = re.search(r"^run ([0-9a-f]{32}): 4 steps", output, re.MULTILINE)
        assert found, output[-3000:]
        run_id = found.group(1)

        # The two workers ran on two different nodes of this cluster.
        job_id = next(j["job_id"] for j in cluster.state("jobs") if j.get("submission_id") == submission_id)
        workers = [a for a in cluster.state("actors", class_name="RayTrainWorker") if a["job_id"] == job_id]
        worker_nodes = {a["node_id"] for a in workers}
        assert len(workers) == 2 and len(worker_nodes) == 2, workers
        assert worker_nodes <= {n["node_id"] for n in nodes}

        # Checkpoints on the shared path.
        assert (checkpoints / f"wganctl-{run_id}" / "checkpoint_0000004" / "checkpoint.pt").is_file()

        # The run, through the server's REST API.
        run = tracking_server.api("GET", "runs/get", params={"run_id": run_id})["run"]
        assert run["info"]["status"] == "FINISHED"
        assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:"), "artifacts must go through the server"
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["wganctl.completed_steps"] == "4" and tags["ray.storage_path"] == str(checkpoints)
        experiment_id = run["info"]["experiment_id"]
        searched = tracking_server.api("POST", "runs/search", json={"experiment_ids": [experiment_id]})
        assert run_id in {r["info"]["run_id"] for r in searched["runs"]}
        for key in ("loss/critic", "loss/generator", "wasserstein_estimate", "gradient_penalty"):
            assert tracking_server.metric_steps(run_id, key) == [1, 2, 3, 4], key
        assert tracking_server.metric_steps(run_id, "throughput/images_per_s") == [2, 4]
        assert tracking_server.artifact_names(run_id, "samples") == ["step_000002.png", "step_000004.png"]
        assert "loss_curves.png" in tracking_server.artifact_names(run_id, "plots")
        grid = requests.get(f"{tracking_server.uri}/get-artifact",
                            params={"run_uuid": run_id, "path": "samples/step_000004.png"}, timeout=30)
        assert grid.status_code == 200 and grid.content.startswith(b"\x89PNG")
        # `wganctl server` said what to set, keeps runs in its sqlite file and the served
        # artifacts in its own directory, not on the nodes.
        assert f"export MLFLOW_TRACKING_URI={tracking_server.uri}" in tracking_server.process.tail(200)
        assert (tracking_server.workdir / "mlflow-server.db").is_file()
        assert list((tracking_server.workdir / "mlartifacts").rglob("step_000004.png"))

        # The model: resolved by `runs:/` through the server, and it samples.
        import mlflow

        mlflow.set_tracking_uri(tracking_server.uri)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*type hints", category=UserWarning)
                model = mlflow.pyfunc.load_model(f"runs:/{run_id}/generator")
                images = model.predict(np.random.default_rng(0).standard_normal((4, 128)).astype("float32"))
        finally:
            mlflow.set_tracking_uri(None)
        assert images.shape == (4, 28, 28, 1) and images.dtype == np.uint8


        # ---- stages from outside the cluster, through Ray Client (ray://): each runs as one task
        # there (pipelines.cluster.connect.through_ray_client), logging to this machine's server.
        # Evaluate (Ray Data batch inference in a task), then tune (Ray Tune, whose trial runs
        # the train stage's TorchTrainer, in a task). Train itself goes through the same hop
        # (tests/test_ray_client.py checks that its whole call travels); running it here too cost
        # about 20 s of the suite. Evaluate and tune one after the other: at once, the
        # evaluation's actors took the CPU the trial's Ray Data reads were waiting for (seen hung).
        client_env = {**cluster.env, "MLFLOW_TRACKING_URI": tracking_server.uri}
        evaluated = run_clients([["evaluate", run_id, "--n", "32", "--metrics", "fid", "--checkpoint", "2"]],
                                cluster.client_address, client_env, tmp_path)[0]
        assert tracking_server.metric_steps(run_id, "eval/fid") == [2], evaluated + output[-2000:]
        (swept,) = run_clients(
            [["tune", "--data", str(data), "--trials", "1", "--steps", "2", "--reports", "1", "--scheduler", "none",
              "--width", "8", "--batch", "16", "--storage-path", str(shared / "sweeps")]],
            cluster.client_address, client_env, tmp_path)
        sweep = re.search(r"^sweep run ([0-9a-f]{32}): 1 trials", swept, re.MULTILINE)
        assert sweep and re.search(r"^best trial run [0-9a-f]{32}: Frechet distance", swept, re.MULTILINE), swept
        assert tracking_server.api("GET", "runs/get", params={"run_id": sweep.group(1)})["run"]["info"]["status"] == "FINISHED"
        for stage in ("evaluate", "tune_sweep"):
            ran = cluster.state("tasks", name=stage)
            assert ran and all(t["state"] == "FINISHED" for t in ran), f"{stage} never ran on the cluster: {ran}"
    finally:
        cluster.stop()
    assert not any(node.alive() for node in cluster.nodes)


def run_clients(commands: list[list[str]], address: str, env: dict, logs: Path) -> list[str]:
    """`wganctl COMMAND --address ADDRESS` for each command at once, on this machine as Ray Client
    drivers; their outputs, once all succeeded."""
    processes = [OwnedProcess([str(VENV_BIN / "wganctl"), *args, "--address", address], env, logs / f"{args[0]}.log")
                 for args in commands]
    try:
        codes = [process.popen.wait(timeout=JOB_TIMEOUT_S) for process in processes]
    finally:
        for process in processes:
            process.stop()
    for args, process, code in zip(commands, processes, codes):
        assert code == 0, f"wganctl {args[0]} through ray:// failed:\n{process.tail(60)}"
    return [process.log.read_text(errors="replace") for process in processes]


def test_ray_client_retries_only_while_the_head_cannot_start_a_client_server(monkeypatch):
    """Both start failures seen right after a head started are retried; any other refusal is not."""
    from pipelines.cluster import connect as ray_cluster

    zombie = ("Initialization failure from server:\nTraceback (most recent call last):\n  File \"proxier.py\", "
              "line 396, in start_specific_server\npsutil.ZombieProcess: PID still exists but it's a zombie")
    errors = [ConnectionAbortedError(zombie), ConnectionAbortedError("Starting Ray client server failed")]
    calls: list[str] = []

    def connect(address: str) -> None:
        calls.append(address)
        if errors:
            raise errors.pop(0)

    monkeypatch.setattr(ray_cluster, "init_ray", connect)
    monkeypatch.setattr(ray_cluster, "CLIENT_CONNECT_RETRY_S", 0.0)
    ray_cluster._connect_client("ray://head:10001")
    assert calls == ["ray://head:10001"] * 3

    def refuse(address: str) -> None:
        calls.append(address)
        raise ConnectionAbortedError("Initialization failure from server: the token is not valid")

    calls.clear()
    monkeypatch.setattr(ray_cluster, "init_ray", refuse)
    with pytest.raises(ConnectionAbortedError, match="token"):
        ray_cluster._connect_client("ray://head:10001")
    assert len(calls) == 1
