"""The MLflow UI: a run's URL in it, and how to start one on a local store (the lines every stage ends with)."""

from __future__ import annotations

import shlex
from urllib.parse import urlsplit

from mlflow.tracking import MlflowClient

from pipelines.tracking.store import shown_uri, tracking_uri


LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
# The training view: without it MLflow 3 shows the run page in its GenAI view (under Evaluation runs)
# and an experiment on its GenAI overview (tests/test_mlflow_ui.py).
UI_VIEW = "workflowType=machine_learning"


def _served() -> bool:
    return urlsplit(tracking_uri()).scheme in ("http", "https")


def ui_url(run_id: str, experiment_id: str | None = None) -> str:
    """The MLflow UI page of the run, in the training view: on the tracking server when
    MLFLOW_TRACKING_URI is one (user and password left out), else on a local `mlflow ui`.
    ``experiment_id``: the run's, when the caller has it (else read from the store)."""
    if experiment_id is None:
        experiment_id = MlflowClient(tracking_uri()).get_run(run_id).info.experiment_id
    base = shown_uri(tracking_uri()) if _served() else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW}"


def ui_hint(run_id: str, experiment_id: str | None = None) -> list[str]:
    """The lines a command ends with: the run's UI URL, after the command that starts a UI
    on this store when the store is local (a path or sqlite:///)."""
    start = [] if _served() else [f"start the UI: mlflow ui --backend-store-uri {shlex.quote(tracking_uri())}"]
    return [*start, f"open the run: {ui_url(run_id, experiment_id)}"]
