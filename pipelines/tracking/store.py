"""Where the runs are: the tracking URI, a client on it, and the checks a stage makes before it writes
(the store reachable, the experiment name valid)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow.tracking import MlflowClient

from wgan.errors import UserError
from pipelines.cluster.connect import REACHABLE_TIMEOUT_S


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else MLflow's default: sqlite:///<cwd>/mlflow.db."""
    return mlflow.get_tracking_uri()


_reached: set[str] = set()


def shown_uri(uri: str) -> str:
    """The tracking URI as it may be printed: without the user and password of an http(s) one."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return uri
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def check_reachable() -> None:
    """Refuse an http(s) tracking URI whose server does not answer within REACHABLE_TIMEOUT_S
    (any HTTP answer counts: a server behind a login still answers). Once per URI and process."""
    import requests

    uri = tracking_uri()
    if urlsplit(uri).scheme not in ("http", "https") or uri in _reached:
        return
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=REACHABLE_TIMEOUT_S)
    except requests.exceptions.RequestException as err:
        if isinstance(err, requests.exceptions.Timeout):
            reason = f"no answer within {REACHABLE_TIMEOUT_S:g} s"
        else:
            reason = "connection refused" if "refused" in str(err) else type(err).__name__
        raise UserError(f"cannot reach the MLflow tracking server at {shown_uri(uri)}: start it or unset "
                        f"MLFLOW_TRACKING_URI ({reason})") from None
    _reached.add(uri)


def store_exists() -> bool:
    """False when the tracking URI is a sqlite file that does not exist yet (opening it would create it)."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return True
    path = uri.removeprefix("sqlite:///").split("?")[0]  # sqlite:////abs/file or sqlite:///relative/file
    return path in ("", ":memory:") or Path(path).exists()


def client(*, needs: str = "") -> MlflowClient:
    """A client of the tracking store, once the store is known to answer (`check_reachable`).
    ``needs``: what a command that only reads the store looks for there (``MLflow run 'abc'``):
    a sqlite store that does not exist is then refused, not created empty."""
    check_reachable()
    if needs and not store_exists():
        raise UserError(f"no {needs} in {tracking_uri()}, a store that does not exist: run the command in the "
                        f"directory that holds mlflow.db, or set MLFLOW_TRACKING_URI to the store that has it")
    return MlflowClient(tracking_uri())


def check_experiment_name(name: str) -> None:
    """Refuse an experiment name MLflow would refuse when the run is created (after the checks)."""
    from mlflow.utils.validation import _validate_experiment_name

    try:
        _validate_experiment_name(name)
    except mlflow.exceptions.MlflowException as err:
        raise UserError(f"--experiment {name!r}: {err.message.splitlines()[0]}: choose another name") from None


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)
