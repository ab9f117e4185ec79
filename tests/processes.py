"""Processes the slow tests own: `wganctl server` and other children, each in its own
session and stopped by signalling its process group (never by name), on free
loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 180
JOB_TIMEOUT_S = 480  # a 4-step train job took 5 min here while other test runs loaded the 2 cores


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def clean_env(**extra: str) -> dict:
    """This process's environment without its own Ray/MLflow targets, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra)
    return env


class OwnedProcess:
    """A child in its own session: stopped by signalling its process group, never by name."""

    def __init__(self, args: list[str], env: dict, log: Path, cwd: Path | None = None):
        self.args, self.log = args, log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        try:
            os.killpg(self.popen.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def stop(self, grace_s: float = 15.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and self.alive():
                self.popen.poll()
                time.sleep(0.2)
            if not self.alive():
                break
        self.popen.wait(timeout=10)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


class TrackingServer:
    """`wganctl server` on a free loopback port, restartable on the same port and database."""

    def __init__(self, workdir: Path, *options: str):
        self.workdir, self.port, self.options = workdir, free_port(), options
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: OwnedProcess | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> "TrackingServer":
        self.process = OwnedProcess([str(VENV_BIN / "wganctl"), "server", "--port", str(self.port), "--workers", "1",
                                     *self.options],
                                    clean_env(), self.workdir / "server.log", cwd=self.workdir)
        return self

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.uri}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.popen.poll() is not None:
                pytest.fail(f"wganctl server exited:\n{self.process.tail()}")
            if self.healthy():
                return
            time.sleep(0.5)
        pytest.fail(f"wganctl server not ready after {timeout} s:\n{self.process.tail()}")

    def stop(self) -> None:
        """SIGTERM to `wganctl server` alone: it must take mlflow's own process group down with it."""
        if self.process and self.process.popen.poll() is None:
            self.process.popen.send_signal(signal.SIGTERM)
            self.process.popen.wait(timeout=60)
        if self.process:
            self.process.stop()  # anything left in the group (nothing, if the above worked)

    def api(self, method: str, endpoint: str, **kwargs) -> dict:
        response = requests.request(method, f"{self.uri}/api/2.0/mlflow/{endpoint}", timeout=30, **kwargs)
        assert response.status_code == 200, f"{endpoint}: {response.status_code} {response.text[:500]}"
        return response.json()

    def metric_steps(self, run_id: str, key: str) -> list[int]:
        history = self.api("GET", "metrics/get-history",
                           params={"run_id": run_id, "metric_key": key, "max_results": 25000})
        return sorted(m["step"] for m in history.get("metrics", []))

    def artifact_names(self, run_id: str, path: str) -> list[str]:
        listing = self.api("GET", "artifacts/list", params={"run_id": run_id, "path": path})
        return sorted(Path(f["path"]).name for f in listing.get("files", []))


class InBackground:
    """``fn(*args, **kwargs)`` on a thread, so a test can act on the run it starts (kill its workers)
    while it trains; `result` waits for it and returns its value, or raises its error."""

    def __init__(self, fn, *args, **kwargs):
        import threading

        self._outcome: dict = {}

        def call() -> None:
            try:
                self._outcome["value"] = fn(*args, **kwargs)
            except BaseException as err:  # noqa: BLE001 - handed to the test by result()
                self._outcome["error"] = err

        self._thread = threading.Thread(target=call, daemon=True)
        self._thread.start()

    def result(self, timeout: float):
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"still running after {timeout:g} s")
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["value"]


REPO = Path(__file__).resolve().parents[1]


def wganctl_to_files(args: list[str], cwd: Path, timeout: float = JOB_TIMEOUT_S, **env: str) -> tuple[str, str]:
    """Run this checkout's `wganctl ARGS` (not the installed entry point's: PYTHONPATH, which a local
    Ray it starts passes on to its workers) in ``cwd`` with stdout and stderr to files, as a user's
    redirected run: no terminal. Returns (stdout, stderr); fails on exit != 0."""
    out, err = cwd / "wganctl.out", cwd / "wganctl.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        code = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, stdout=stdout, stderr=stderr,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False,
                              env=clean_env(PYTHONPATH=str(REPO), **env)).returncode
    printed = out.read_text(errors="replace"), err.read_text(errors="replace")
    assert code == 0, f"wganctl {' '.join(args)} exited {code}:\n{printed[0][-3000:]}\n{printed[1][-3000:]}"
    return printed


def train_worker_pids() -> list[int]:
    """PIDs of the live Ray Train workers of this process's Ray (what a killed-worker test kills).

    Asked of Ray's state API, not read from /proc: another Ray on the same machine (a user's
    run, another test session) has RayTrainWorker processes too, and they are not ours to kill.
    """
    import ray
    from ray.util.state import list_actors

    ours = ray.get_runtime_context().gcs_address
    actors = list_actors(address=ours, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                         raise_on_missing_output=False)
    return [actor.pid for actor in actors if actor.pid]
