"""What the stages share in MLflow, one module per concern, re-exported here (`tracking.client()`):

- `store`: the tracking URI, the client, the checks before a stage writes;
- `runs`: a training run's layout (docs/architecture.md, section 3), written here;
- `datasets`: the prepared dataset as the runs' MLflow dataset input;
- `models`: the generator as an MLflow model, logged and loaded;
- `registry`: runs by id or by registered version (models:/NAME@ALIAS);
- `ui`: a run's URL in the MLflow UI.

Beside them: the tag names (`run_tags`), rank 0's outage-proof client (`resilient_logging`), rank 0's
system metrics (`system_metrics`), the logged generator model (`generator_model`) and the tracking
server of `wganctl server` (`server`)."""

from pipelines.tracking.store import (
    tracking_uri,
    shown_uri,
    check_reachable,
    store_exists,
    client,
    check_experiment_name,
    experiment_id,
)
from pipelines.tracking.ui import LOCAL_UI, UI_VIEW, ui_url, ui_hint
from pipelines.tracking.registry import MODEL_URI_PREFIX, resolve_run_id, get_run
from pipelines.tracking.runs import (
    CONFIG_FILE,
    RUN_SETTINGS_FILE,
    METRICS,
    code_version,
    start_train_run,
    log_run_settings,
    record_resume,
    ray_run_name,
    metrics_batch,
    log_csv,
    log_grid,
    log_loss_curves,
)
from pipelines.tracking.datasets import (
    DATASET_DIGEST_CHARS,
    PreparedDataset,
    dataset_name,
    prepared_dataset,
    log_dataset,
)
from pipelines.tracking.models import (
    MODEL_NAME,
    model_requirements,
    log_generator_model,
    CheckpointGenerator,
    load_generator,
)

__all__ = [
    "tracking_uri",
    "shown_uri",
    "check_reachable",
    "store_exists",
    "client",
    "check_experiment_name",
    "experiment_id",
    "CONFIG_FILE",
    "RUN_SETTINGS_FILE",
    "METRICS",
    "code_version",
    "start_train_run",
    "log_run_settings",
    "record_resume",
    "ray_run_name",
    "metrics_batch",
    "log_csv",
    "log_grid",
    "log_loss_curves",
    "DATASET_DIGEST_CHARS",
    "PreparedDataset",
    "dataset_name",
    "prepared_dataset",
    "log_dataset",
    "MODEL_NAME",
    "model_requirements",
    "log_generator_model",
    "CheckpointGenerator",
    "load_generator",
    "LOCAL_UI",
    "UI_VIEW",
    "ui_url",
    "ui_hint",
    "MODEL_URI_PREFIX",
    "resolve_run_id",
    "get_run",
]
