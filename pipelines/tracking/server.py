"""`wganctl server`: MLflow's own tracking server, set up for Ray clusters.

A sqlite file is enough for one machine, but Ray workers on other nodes and
`ray job submit` drivers need one HTTP endpoint. With served artifacts
(`--serve-artifacts`) they also upload sample grids and models *through* the
server, so no node needs storage credentials: only the server can write to
``--artifacts-destination`` (a directory here, ``s3://...`` for a team, see
``infra/mlflow``).

The server binds to 127.0.0.1 unless told otherwise: MLflow runs no
authentication by default, and anyone who reaches the port can read and write
every run (``--basic-auth`` turns on MLflow's basic-auth app).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from wgan.errors import UserError

from pipelines.stage_options import ServerSettings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, basic_auth: bool) -> str | None:
    """The warning to print when the server is reachable from other machines, else None."""
    if is_loopback(host):
        return None
    auth = ("" if basic_auth else
            " Without --basic-auth anyone who reaches it can read, change and delete every run;")
    return (f"the MLflow server binds to {host}, not 127.0.0.1: it is reachable from other machines.{auth}"
            " keep it behind a firewall or a TLS proxy, and set MLFLOW_SERVER_ALLOWED_HOSTS when clients"
            " reach it by a DNS name.")


def server_command(settings: ServerSettings) -> list[str]:
    """The `mlflow server` command line for resolved ``settings``."""
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--host", settings.host, "--port", str(settings.port),
           "--backend-store-uri", settings.backend_store_uri,
           "--serve-artifacts", "--artifacts-destination", settings.artifacts_destination,
           "--workers", str(settings.workers)]
    if settings.basic_auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def server_env(base: dict | None = None) -> dict:
    """The server's environment: MLflow's job runner off unless asked for.

    The job runner (GenAI evaluation and trace jobs, nothing wganctl uses) adds
    about eight Python processes that double the start-up time and outlive a
    SIGTERM by many seconds; MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true in the environment
    turns it back on.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


class MlflowServer:
    """An `mlflow server` child in its own process group, so stopping it stops its workers too."""

    def __init__(self, settings: ServerSettings, log_path: str | os.PathLike | None = None,
                 env: dict | None = None):
        self.settings = settings
        self.log_path = Path(log_path) if log_path else None
        self.env = env
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return self.settings.tracking_uri

    def start(self) -> "MlflowServer":
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(server_command(self.settings), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=server_env(self.env),
                                            start_new_session=True)
        finally:
            if self.log_path:
                out.close()
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Block until /health answers; a server that exits first is an error with its log's tail."""
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with code {self.process.returncode}{self._log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server on {self.uri} not ready after {timeout:.0f} s{self._log_tail()}")
            time.sleep(0.5)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the server's process group, SIGKILL whatever is left after ``timeout``."""
        if self.process is None or self.process.poll() is not None and not _group_alive(self.process.pid):
            return
        _signal_group(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(self.process.pid):
            self.process.poll()
            time.sleep(0.2)
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return ":\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
        return ""


def _check_port_free(host: str, port: int) -> None:
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as err:
            if isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL:
                fix = "give --host 127.0.0.1, 0.0.0.0 (every interface) or an address of this machine"
            elif err.errno == errno.EACCES:
                fix = "pass a --port above 1023, or run where binding it is allowed"
            else:
                fix = "pass another --port, or stop the server already running there"
            raise UserError(f"cannot listen on {host}:{port} ({err.strerror}): {fix}")


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def preflight(settings: ServerSettings) -> None:
    """Refuse what would stop the server from starting: --basic-auth without its secret, a port
    already taken (or a host this machine cannot bind)."""
    if settings.basic_auth and not os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        raise UserError("--basic-auth needs MLFLOW_FLASK_SERVER_SECRET_KEY (a random string, the same for every "
                        "server replica) and, on first start, MLFLOW_AUTH_ADMIN_PASSWORD in the environment")
    _check_port_free(settings.host, settings.port)


def serve(settings: ServerSettings, announce: Callable[[str], None] = print) -> int:
    """Run the server in the foreground until Ctrl-C or SIGTERM; returns its exit code."""
    preflight(settings)
    server = MlflowServer(settings)

    def terminate(signum, frame):  # a SIGTERM to `wganctl server` must stop mlflow's process group too
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        server.start()
        server.wait_ready()
        announce(f"MLflow server ready on {server.uri} (runs: {settings.backend_store_uri}, "
                 f"artifacts: {settings.artifacts_destination})\n"
                 f"  export MLFLOW_TRACKING_URI={server.uri}")
        return server.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
