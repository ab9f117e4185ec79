"""What the stages share in MLflow: the run layout of a training run (docs/architecture.md,
section 3), written here, with its tag names (`run_tags`), rank 0's outage-proof client
(`resilient_logging`), rank 0's system metrics (`system_metrics`), the logged generator model
(`generator_model`) and the tracking server of `wganctl server` (`server`)."""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
import numpy as np
import torch
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

import wgan
from wgan import checkpoint as ckpt
from wgan.config import RunSettings, TrainConfig
from wgan.data import fs as datafs
from wgan.errors import UserError
from pipelines.cluster.connect import REACHABLE_TIMEOUT_S
from pipelines.tracking import run_tags

MODEL_NAME = "generator"
CONFIG_FILE = "config.json"  # the run's TrainConfig, whole
RUN_SETTINGS_FILE = "run_settings.json"  # the RunSettings it last ran with
# The critic gap is `wasserstein_estimate` under wgan/wgan-gp and `critic_gap` otherwise (`wgan.losses.gap_metric`).
METRICS = ("loss/critic", "loss/generator", "wasserstein_estimate", "critic_gap", "gradient_penalty",
           "eval/fd", "throughput/images_per_s")  # eval/fd: with --eval-every, its curve beside the losses


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


MODEL_URI_PREFIX = "models:/"


def resolve_run_id(client: MlflowClient, ref: str) -> str:
    """The run id ``ref`` names: a run id as it is, or a registered model version's source run for
    ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (what `wganctl tune --register` registers)."""
    if not ref.startswith(MODEL_URI_PREFIX):
        return ref
    name, at, alias = ref.removeprefix(MODEL_URI_PREFIX).partition("@")
    if not at:
        name, _, alias = name.rpartition("/")
    if not name or not alias or "/" in name or (not at and not alias.isdigit()):
        raise UserError(f"cannot read {ref!r}: give models:/NAME@ALIAS (e.g. models:/NAME@champion), "
                        f"models:/NAME/VERSION or a run id")
    try:
        version = client.get_model_version_by_alias(name, alias) if at else client.get_model_version(name, alias)
    except mlflow.exceptions.MlflowException as err:
        # unknown name or version: RESOURCE_DOES_NOT_EXIST; unknown alias: INVALID_PARAMETER_VALUE (sqlite store)
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        what = f"alias {alias!r}" if at else f"version {alias}"
        raise UserError(f"no registered model {name!r} with {what} in {tracking_uri()}: check the name and "
                        f"{'alias' if at else 'version'} (`wganctl tune --register {name}` registers one, "
                        f"--alias names it), or set MLFLOW_TRACKING_URI to the store that has it")
    if not version.run_id:
        raise UserError(f"{ref} (version {version.version}) was not registered from a run: give the run id of a training run")
    return version.run_id


def get_run(client: MlflowClient, run_id: str):
    """The run ``run_id`` names: a run id, or a ``models:/`` URI of a registered version (`resolve_run_id`)."""
    run_id = resolve_run_id(client, run_id)
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"no MLflow run {run_id!r} in {tracking_uri()}: check the id, or set MLFLOW_TRACKING_URI to the store that has it")


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def start_train_run(client: MlflowClient, experiment: str, cfg: TrainConfig, settings: RunSettings, *,
                    data_dir: str, manifest: dict, manifest_sha256: str,
                    parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Create the run, with the hyperparameters and run settings as params (the Runs table's
    columns, as before the split) and each whole as JSON (config.json, run_settings.json)."""
    extra = dict(tags or {})
    if parent_run_id:
        extra[run_tags.PARENT_RUN] = parent_run_id
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


# MLflow keeps at most 36 characters of a dataset digest; the whole sha256 is the run's
# data.manifest_sha256 tag.
DATASET_DIGEST_CHARS = 16


class PreparedDataset(MetaDataset):
    """MetaDataset with the profile it leaves out."""

    def __init__(self, profile: dict, **kwargs):
        self._profile = profile
        super().__init__(**kwargs)

    @property
    def profile(self) -> dict:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def dataset_name(manifest: dict) -> str:
    """A prepared dataset's name in MLflow: ``fashion-mnist-28px``."""
    return f"{manifest.get('dataset')}-{manifest['size']}px"


def prepared_dataset(data_dir: str, manifest: dict, manifest_sha256: str):
    """The prepared dataset at ``data_dir`` as an MLflow dataset (docs/architecture.md, section 3):
    its location as the source, the parquet schema and the manifest's counts as the profile."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json, resolve_dataset_source
    from mlflow.types import ColSpec, DataType, Schema

    location = datafs.absolute(data_dir)
    scheme = urlsplit(location).scheme if datafs.is_uri(location) else "local"
    scheme = {"file": "local", "gcs": "gs"}.get(scheme, scheme)  # pyarrow's spellings, MLflow's names
    try:  # the artifact-repository source of that scheme, chosen by name: the resolver warns on local paths
        source = get_dataset_source_from_json(json.dumps({"uri": location}), source_type=scheme)
    except mlflow.exceptions.MlflowException:
        source = resolve_dataset_source(location)
    schema = Schema([ColSpec(DataType.binary, "image"), ColSpec(DataType.long, "label"),
                     ColSpec(DataType.string, "split")])
    profile = {"images": manifest["count"], "classes": len(manifest.get("class_names") or []),
               "splits": manifest["splits"], "image_size": manifest["size"], "channels": manifest["channels"]}
    return PreparedDataset(profile, source=source, name=dataset_name(manifest),
                           digest=manifest_sha256[:DATASET_DIGEST_CHARS], schema=schema)


def log_dataset(client: MlflowClient, run_id: str, data_dir: str, manifest: dict, manifest_sha256: str, *,
                context: str) -> None:
    """Log the prepared dataset as an input of the run (the Runs table's Dataset column). MLflow
    keeps one input per dataset and run: a run that already has this one keeps its first context."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = prepared_dataset(data_dir, manifest, manifest_sha256)._to_mlflow_entity()
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])])


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


def model_requirements() -> list[str]:
    """What the `generator` model needs to load: pinned to the versions that logged it.

    Given explicitly because MLflow's inference of requirements runs the model in a
    subprocess (8 of the 11 s that logging took, measured here).
    """
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "torch", "numpy")]


def log_generator_model(run_id: str, payload: dict) -> str:
    """Log the generator of a checkpoint payload as the pyfunc model `generator`."""
    from mlflow.models import infer_signature

    from pipelines.tracking import generator_model

    cfg = TrainConfig.from_dict(payload["config"])
    z = torch.randn(2, cfg.z_dim, generator=torch.Generator().manual_seed(0)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "generator.pt"
        # The moving-average generator when the run kept one: it is the better sampler.
        torch.save({"config": payload["config"], "generator": ckpt.sampling_state(payload),
                    "step": payload["step"]}, weights)
        example_out = np.zeros((2, cfg.image_size, cfg.image_size, cfg.channels), dtype=np.uint8)
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=generator_model.__file__,
                artifacts={"generator": str(weights)},
                code_paths=[str(Path(wgan.__file__).parent)],
                # params: {"label": K} draws class K from a conditional generator; -1: classes in turn
                signature=infer_signature(z, example_out, params={"label": -1}),
                input_example=z,
                pip_requirements=model_requirements(),
            )
    return info.model_uri


class CheckpointGenerator:
    """A checkpoint's generator (its moving average when kept) behind the logged model's
    ``predict(z, params)``: the same sampling code, weights from the checkpoint."""

    def __init__(self, payload: dict):
        from pipelines.tracking.generator_model import GeneratorModel

        self.model = GeneratorModel().load_weights({"config": payload["config"],
                                                    "generator": ckpt.sampling_state(payload)})

    def predict(self, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        return self.model.predict(None, model_input, params)


def load_generator(run_id: str, checkpoint: str | int | None = None):
    """The run's pyfunc generator and its latent size; ``run_id`` may be a ``models:/`` URI (`resolve_run_id`).
    ``checkpoint``: the generator of the run's checkpoint at that step, or ``best`` (`checkpoints.of_run`)."""
    run = get_run(client(needs=f"MLflow run {run_id!r}"), run_id)
    run_id = run.info.run_id
    if checkpoint is not None:
        from pipelines.cluster import checkpoints

        _, payload = checkpoints.of_run(run, checkpoint)
        return CheckpointGenerator(payload), int(payload["config"]["z_dim"])
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/{MODEL_NAME}")
    except mlflow.exceptions.MlflowException as err:
        raise UserError(f"run {run_id} has no logged generator ({str(err).splitlines()[0]}): "
                        f"was its training finished? `wganctl train --resume {run_id}` completes it")
    z_dim = model.metadata.get_input_schema().inputs[0].shape[-1]
    return model, z_dim
