"""A training run's layout in MLflow (docs/architecture.md, section 3): its params, config.json and
run_settings.json, its resume record, its metrics, sample grids and loss curves."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

import wgan
from wgan.config import RunSettings, TrainConfig
from pipelines.tracking import run_tags
from pipelines.tracking.datasets import log_dataset
from pipelines.tracking.store import experiment_id


CONFIG_FILE = "config.json"  # the run's TrainConfig, whole
RUN_SETTINGS_FILE = "run_settings.json"  # the RunSettings it last ran with
# The critic gap is `wasserstein_estimate` under wgan/wgan-gp and `critic_gap` otherwise (`wgan.losses.gap_metric`).
METRICS = ("loss/critic", "loss/generator", "wasserstein_estimate", "critic_gap", "gradient_penalty",
           "eval/fd", "throughput/images_per_s")  # eval/fd: with --eval-every, its curve beside the losses


def code_version() -> str:
    """The git commit of the installed source when it is a checkout, else the package version."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(wgan.__file__).parent,
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return wgan.__version__


def start_train_run(client: MlflowClient, experiment: str, cfg: TrainConfig, settings: RunSettings, *,
                    data_dir: str, manifest: dict, manifest_sha256: str, tags: dict[str, str] | None = None) -> str:
    """Create the run, with the hyperparameters and run settings as params (the Runs table's
    columns, as before the split) and each whole as JSON (config.json, run_settings.json).
    ``tags``: more tags, e.g. a sweep trial's parent run and trial id."""
    extra = dict(tags or {})
    run = client.create_run(experiment_id(client, experiment), tags={
        **extra,
        run_tags.STAGE: "train",
        run_tags.DATA_MANIFEST_SHA256: manifest_sha256,
        run_tags.DATA_DATASET: str(manifest.get("dataset")),
        run_tags.DATA_DIR: data_dir,
        run_tags.CODE_VERSION: code_version(),
        run_tags.STORAGE_PATH: settings.storage_path,
        run_tags.RUN_NAME: f"{cfg.loss}-{manifest.get('dataset')}-{cfg.image_size}px",
    })
    run_id = run.info.run_id
    client.set_tag(run_id, run_tags.RAY_RUN_NAME, ray_run_name(run_id))
    values = {**cfg.to_dict(), **settings.to_dict()}
    params = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in values.items()}
    params["data_dir"] = data_dir
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
    client.log_text(run_id, cfg.to_json(), CONFIG_FILE)
    log_run_settings(client, run_id, settings)
    log_dataset(client, run_id, data_dir, manifest, manifest_sha256, context="training")
    return run_id


def log_run_settings(client: MlflowClient, run_id: str, settings: RunSettings) -> None:
    client.log_text(run_id, json.dumps(settings.to_dict(), indent=2, sort_keys=True), RUN_SETTINGS_FILE)


def record_resume(client: MlflowClient, run_id: str, at_step: int, changes: dict) -> None:
    """Append this resume's changed run settings to the run's ``wganctl.resumed_with`` tag
    (its params keep the values it started with: MLflow params cannot change)."""
    earlier = client.get_run(run_id).data.tags.get(run_tags.RESUMED_WITH)
    entry = f"step {at_step}: " + ", ".join(f"{k}={v}" for k, v in changes.items())
    client.set_tag(run_id, run_tags.RESUMED_WITH, f"{earlier}; {entry}" if earlier else entry)


def ray_run_name(run_id: str) -> str:
    return f"wganctl-{run_id}"


def metrics_batch(history: list[tuple[int, dict[str, float]]], timestamp_ms: int) -> list[Metric]:
    return [Metric(key, value, timestamp_ms, step) for step, values in history for key, value in values.items()]


def log_csv(client: MlflowClient, run_id: str, rows: list[dict], artifact_file: str,
            fieldnames: list[str] | None = None) -> None:
    """A table as a CSV artifact (a header, then one line per row; ``fieldnames``: the columns, in
    order, else the first row's keys). CSV, not MLflow's log_table JSON: it opens in a spreadsheet."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames or list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    client.log_text(run_id, buffer.getvalue(), artifact_file)


def log_grid(client: MlflowClient, run_id: str, picture: np.ndarray, step: int) -> None:
    client.log_image(run_id, picture.squeeze(-1) if picture.shape[-1] == 1 else picture,
                     artifact_file=f"samples/step_{step:06d}.png")


def log_loss_curves(client: MlflowClient, run_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {k: client.get_metric_history(run_id, k) for k in METRICS if k != "throughput/images_per_s"}
    histories = {k: hist for k, hist in histories.items() if hist}  # one of the two gap names is absent
    if not histories:
        return
    fig, axes = plt.subplots(1, len(histories), figsize=(4 * len(histories), 3.2), squeeze=False)
    for ax, (key, hist) in zip(axes[0], histories.items()):
        hist.sort(key=lambda m: m.step)
        ax.plot([m.step for m in hist], [m.value for m in hist], lw=0.8)
        ax.set_title(key)
        ax.set_xlabel("generator step")
    fig.tight_layout()
    client.log_figure(run_id, fig, "plots/loss_curves.png")
    plt.close(fig)
