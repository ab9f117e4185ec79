"""Bad input, everywhere: every command's options given a value a user could type.

One row per (command, option, bad value, what the one line must say). Each row runs the
command in this process (CliRunner) in a fresh working directory and asserts exit code 2,
exactly one non-empty line on stderr that holds the row's message (no traceback), nothing
on stdout, and nothing written: not in the working directory (prepare's output, train's
./ray_results and ./mlflow.db), not in the shared MLflow store the rows read runs from, not
beside the dataset. A row refused before Ray finds `init_ray` and `ray.init` replaced by an
assertion; the rows marked `ray` are refused right after Ray connects (the session's local
Ray: no GPU), before any MLflow run exists; a row's ``autoscaler`` stands for the cluster
config an autoscaling cluster reports (the most of each resource it can grow to).

A row's store: ``fresh`` (a sqlite store that does not exist yet), ``shared`` (a store that
holds a train run, a classifier run and a run of another kind, logged but not trained), or
``unreachable`` (http://127.0.0.1:<a port nobody listens on>).
"""

from __future__ import annotations

import os
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from ray._private.state import GlobalState
from typer.testing import CliRunner

import pipelines.augment
import pipelines.cluster.connect
import pipelines.evaluate
import pipelines.prepare
import pipelines.train
from pipelines import tracking
from pipelines.cli import app
from pipelines.tracking import run_tags
from tests.processes import free_port
from wgan.classifier import Classifier, ClassifierSpec
from wgan.config import RunSettings, TrainConfig
from wgan.data.manifest import load_manifest, manifest_sha256


@dataclass(frozen=True)
class Row:
    id: str
    args: str  # the command line, {placeholders} filled from the `world` fixture
    message: str  # a fragment the one line on stderr must hold
    store: str = "fresh"
    ray: bool = False  # refused only once Ray is connected
    env: dict = field(default_factory=dict)
    # The most an autoscaler could give the cluster, as Ray's cluster config says (None: no autoscaler)
    autoscaler: dict | None = None


ROWS = [
    # --- root ---------------------------------------------------------------------------------
    Row("root-unknown-command", "nosuch", "No such command 'nosuch'"),
    Row("root-unknown-option", "--bogus", "No such option: --bogus"),
    Row("experiment-unknown-command", "experiment nosuch", "No such command 'nosuch'"),
    # --- prepare ------------------------------------------------------------------------------
    Row("prepare-DATASET-unknown", "prepare nosuch", "unknown dataset 'nosuch'"),
    Row("prepare-PATH-with-a-named-dataset", "prepare fashion-mnist extra", "takes no PATH"),
    Row("prepare-PATH-missing-for-imagefolder", "prepare imagefolder", "imagefolder needs the folder"),
    Row("prepare-PATH-not-a-folder", "prepare imagefolder {tmp}/nowhere", "does not exist or is not a folder"),
    Row("prepare-size-not-a-number", "prepare fashion-mnist --size abc", "Invalid value for '--size'"),
    Row("prepare-size-zero", "prepare fashion-mnist --size 0", "--size must be a positive number"),
    Row("prepare-channels-2", "prepare fashion-mnist --channels 2", "--channels must be 1 or 3"),
    Row("prepare-channels-no-value", "prepare fashion-mnist --channels", "Option '--channels' requires an argument"),
    Row("prepare-split-unknown", "prepare fashion-mnist --split nope", "has no split 'nope'"),
    Row("prepare-limit-zero", "prepare fashion-mnist --limit 0", "--limit must be at least 1"),
    Row("prepare-seed-negative", "prepare fashion-mnist --seed -1", "--seed must be zero or positive"),
    Row("prepare-source-dir-missing", "prepare fashion-mnist --source-dir {tmp}/nowhere", "source directory"),
    Row("prepare-out-under-a-file", "prepare fashion-mnist --out {file}/data", "is a file, not a directory"),
    Row("prepare-out-unknown-scheme", "prepare fashion-mnist --out nosuch://bucket/data",
        "nosuch:// is not a filesystem this machine knows"),
    Row("prepare-out-not-a-dataset", "prepare fashion-mnist --out {root}", "exists and is not a prepared dataset"),
    Row("prepare-out-other-parameters", "prepare fashion-mnist --size 32 --out {data}",
        "was prepared with other parameters"),
    Row("prepare-strict-given-a-value", "prepare fashion-mnist --strict yes", "fashion-mnist takes no PATH"),
    Row("prepare-address-nobody-listens", "prepare fashion-mnist --address {dead}", "cannot reach a Ray cluster at"),
    Row("prepare-address-malformed", "prepare fashion-mnist --address 127.0.0.1", "is not a Ray address"),
    Row("prepare-RAY_ADDRESS-nobody-listens", "prepare fashion-mnist", "unset RAY_ADDRESS",
        env={"RAY_ADDRESS": "{dead}"}),
    # --- train: the stage's own options ---------------------------------------------------------
    Row("train-data-none", "train", "no training data: pass --data DIR"),
    Row("train-data-missing", "train --data {tmp}/nowhere", "is not a prepared dataset (no manifest.json)"),
    Row("train-data-corrupt-manifest", "train --data {broken}", "manifest.json is not valid JSON"),
    Row("train-data-unknown-scheme", "train --data nosuch://bucket/data", "Unrecognized filesystem type"),
    Row("train-experiment-empty", "train --data {data} --experiment ''", "--experiment '': Invalid experiment name"),
    Row("train-resume-no-store", "train --resume 0123456789abcdef", "a store that does not exist"),
    Row("train-resume-unknown-run", "train --resume 0123456789abcdef", "no MLflow run '0123456789abcdef'",
        store="shared"),
    Row("train-resume-not-a-train-run", "train --resume {other_run}", "is not a wganctl training run", store="shared"),
    Row("train-resume-changes-the-model", "train --resume {train_run} --lr 1", "--lr would change the model",
        store="shared"),
    Row("train-resume-storage-without-checkpoints", "train --resume {train_run} --storage-path {tmp}/elsewhere",
        "holds no checkpoint of run", store="shared"),
    Row("train-config-missing", "train --data {data} --config {tmp}/nowhere.yaml", "does not exist"),
    Row("train-config-not-yaml", "train --data {data} --config {cfg_yaml}", "is not valid YAML/JSON"),
    Row("train-config-not-a-mapping", "train --data {data} --config {cfg_list}", "must hold a mapping"),
    Row("train-config-unknown-key", "train --data {data} --config {cfg_key}", "unknown config key(s) lamda_gp"),
    Row("train-config-wrong-type", "train --data {data} --config {cfg_type}", "batch must be an integer, got 'many'"),
    Row("train-address-nobody-listens", "train --data {data} --address {dead}", "cannot reach a Ray cluster at"),
    Row("train-address-ray-client-nobody-listens", "train --data {data} --address ray://{dead}",
        "cannot reach a Ray cluster at ray://"),
    Row("train-quiet-given-a-value", "train --data {data} --quiet yes", "unexpected extra argument"),
    Row("train-tracking-server-unreachable", "train --data {data}", "cannot reach the MLflow tracking server at",
        store="unreachable"),
    # --- train: the knobs (TrainConfig) ---------------------------------------------------------
    Row("train-loss-unknown", "train --data {data} --loss nope", "unknown loss 'nope'"),
    Row("train-arch-unknown", "train --data {data} --arch nope", "unknown arch 'nope'"),
    Row("train-width-zero", "train --data {data} --width 0", "--width must be >= 1"),
    Row("train-width-not-a-number", "train --data {data} --width wide", "Invalid value for '--width'"),
    Row("train-z-dim-zero", "train --data {data} --z-dim 0", "--z-dim must be >= 1"),
    Row("train-steps-zero", "train --data {data} --steps 0", "--steps must be >= 1"),
    Row("train-batch-zero", "train --data {data} --batch 0", "--batch must be >= 1"),
    Row("train-batch-more-than-the-images", "train --data {data} --batch 1024", "is more than the 512 images"),
    Row("train-batch-per-worker-more-than-a-share", "train --data {data} --batch 514 --workers 2",
        "257 a step on each of 2 workers, whose shares are 256 images"),
    Row("train-batch-not-split-by-workers", "train --data {data} --batch 63 --workers 2", "does not split over 2"),
    Row("train-n-critic-zero", "train --data {data} --n-critic 0", "--n-critic must be >= 1"),
    Row("train-lr-zero", "train --data {data} --lr 0", "--lr must be > 0"),
    Row("train-lr-infinite", "train --data {data} --lr inf", "--lr must be > 0 and finite"),
    Row("train-betas-above-one", "train --data {data} --betas 2 2", "--betas takes two numbers in [0, 1)"),
    Row("train-betas-one-number", "train --data {data} --betas 0.5", "Option '--betas' requires 2 arguments"),
    Row("train-lambda-gp-negative", "train --data {data} --lambda-gp -1", "--lambda-gp must be >= 0"),
    Row("train-lambda-gp-infinite", "train --data {data} --lambda-gp inf", "--lambda-gp must be >= 0 and finite"),
    Row("train-clip-zero", "train --data {data} --loss wgan --clip 0", "--clip must be > 0"),
    Row("train-critic-norm-unknown", "train --data {data} --critic-norm nope", "unknown critic norm 'nope'"),
    Row("train-critic-norm-batch-with-wgan-gp", "train --data {data} --critic-norm batch",
        "batch norm in the critic is refused"),
    Row("train-seed-negative", "train --data {data} --seed -1", "--seed must be zero or positive"),
    Row("train-conditional-given-a-value", "train --data {data} --conditional yes", "unexpected extra argument"),
    Row("train-conditioning-unknown", "train --data {data} --conditional --conditioning nope",
        "unknown conditioning 'nope'"),
    Row("train-g-ema-one", "train --data {data} --g-ema 1", "--g-ema must be in [0, 1)"),
    # --- train: the run settings (RunSettings) --------------------------------------------------
    Row("train-workers-zero", "train --data {data} --workers 0", "--workers must be >= 1"),
    Row("train-eval-every-negative", "train --data {data} --eval-every -1", "--eval-every must be >= 0"),
    Row("train-eval-samples-one", "train --data {data} --eval-every 2 --eval-samples 1",
        "--eval-samples must be >= 2"),
    Row("train-keep-checkpoints-negative", "train --data {data} --keep-checkpoints -1",
        "--keep-checkpoints must be >= 0"),
    Row("train-eval-every-without-a-classifier", "train --data {data} --eval-every 2",
        "--eval-every needs the project classifier: no classifier for fashion-mnist at 28 px"),
    Row("train-precision-unknown", "train --data {data} --precision nope", "unknown precision 'nope'"),
    Row("train-precision-fp16-on-cpus", "train --data {data} --precision fp16", "--precision fp16 runs on GPUs only"),
    Row("train-log-every-zero", "train --data {data} --log-every 0", "intervals must be >= 1"),
    Row("train-sample-every-zero", "train --data {data} --sample-every 0", "intervals must be >= 1"),
    Row("train-checkpoint-every-zero", "train --data {data} --checkpoint-every 0", "intervals must be >= 1"),
    Row("train-storage-path-a-file", "train --data {data} --storage-path {file}", "is a file, not a directory"),
    Row("train-storage-path-unknown-scheme", "train --data {data} --storage-path nosuch://bucket/ckpt",
        "nosuch:// is not a filesystem this machine knows"),
    Row("train-max-failures-negative", "train --data {data} --max-failures -1", "--max-failures must be >= 0"),
    Row("train-wait-for-workers-zero", "train --data {data} --wait-for-workers 0", "--wait-for-workers must be > 0"),
    Row("train-gpu-without-gpus", "train --data {data} --gpu", "no GPU in the Ray cluster: drop --gpu", ray=True),
    Row("train-workers-more-than-the-autoscaler-places", "train --data {data} --address auto --workers 4",
        "--workers 4 needs 4 CPUs (1 per worker), the Ray cluster has at most 3: lower --workers to 3", ray=True,
        autoscaler={"CPU": 3}),
    Row("train-gpu-workers-more-than-the-autoscaler-places", "train --data {data} --address auto --gpu --workers 2",
        "--workers 2 needs 2 GPUs (1 per worker), the Ray cluster has at most 1: lower --workers to 1", ray=True,
        autoscaler={"CPU": 16, "GPU": 1}),
    # --- sample ---------------------------------------------------------------------------------
    Row("sample-RUN_ID-no-store", "sample 0123456789abcdef", "a store that does not exist"),
    Row("sample-RUN_ID-unknown", "sample 0123456789abcdef", "no MLflow run '0123456789abcdef'", store="shared"),
    Row("sample-RUN_ID-no-generator", "sample {train_run}", "has no logged generator", store="shared"),
    Row("sample-RUN_ID-malformed-models-uri", "sample models:/bad", "cannot read 'models:/bad'", store="shared"),
    Row("sample-RUN_ID-unknown-alias", "sample models:/nope@champion", "no registered model 'nope'", store="shared"),
    Row("sample-n-zero", "sample {train_run} --n 0", "--n must be >= 1", store="shared"),
    Row("sample-out-jpg", "sample {train_run} --out x.jpg", "unsupported output x.jpg", store="shared"),
    Row("sample-seed-not-a-number", "sample {train_run} --seed s", "Invalid value for '--seed'", store="shared"),
    Row("sample-class-not-a-number", "sample {train_run} --class shirt", "Invalid value for '--class'", store="shared"),
    Row("sample-checkpoint-not-saved", "sample {train_run} --checkpoint 5", "has no checkpoint at step 5",
        store="shared"),
    Row("sample-checkpoint-not-a-step", "sample {train_run} --checkpoint latest",
        "--checkpoint 'latest': give a step the run checkpointed, or best", store="shared"),
    Row("sample-tracking-server-unreachable", "sample {train_run}", "cannot reach the MLflow tracking server at",
        store="unreachable"),
    # --- interpolate ----------------------------------------------------------------------------
    Row("interpolate-RUN_ID-unknown", "interpolate 0123456789abcdef", "no MLflow run '0123456789abcdef'",
        store="shared"),
    Row("interpolate-RUN_ID-no-generator", "interpolate {train_run}", "has no logged generator", store="shared"),
    Row("interpolate-out-jpg", "interpolate {train_run} --out x.jpg", "unsupported output x.jpg", store="shared"),
    Row("interpolate-rows-zero", "interpolate {train_run} --rows 0", "--rows must be >= 1", store="shared"),
    Row("interpolate-steps-one", "interpolate {train_run} --steps 1", "--steps >= 2", store="shared"),
    Row("interpolate-seed-not-a-number", "interpolate {train_run} --seed s", "Invalid value for '--seed'"),
    Row("interpolate-tracking-server-unreachable", "interpolate {train_run}",
        "cannot reach the MLflow tracking server at", store="unreachable"),
    # --- tune -----------------------------------------------------------------------------------
    Row("tune-data-none", "tune", "Missing option '--data'"),
    Row("tune-data-missing", "tune --data {tmp}/nowhere", "is not a prepared dataset"),
    Row("tune-wait-for-workers-zero", "tune --data {data} --wait-for-workers 0", "--wait-for-workers must be > 0"),
    Row("tune-space-missing", "tune --data {data} --space {tmp}/nowhere.yaml", "search space file"),
    Row("tune-space-not-yaml", "tune --data {data} --space {cfg_yaml}", "is not valid YAML"),
    Row("tune-space-unknown-key", "tune --data {data} --space {cfg_key}", "space.lamda_gp: not a train option"),
    Row("tune-width-zero", "tune --data {data} --width 0", "--width must be >= 1"),
    Row("tune-batch-zero", "tune --data {data} --batch 0", "--batch must be >= 1"),
    Row("tune-batch-more-than-the-images", "tune --data {data} --batch 1024", "is more than the 512 images"),
    Row("tune-classifier-unknown", "tune --data {data} --classifier 0123456789abcdef", "no MLflow run",
        store="shared"),
    Row("tune-classifier-not-a-classifier", "tune --data {data} --classifier {train_run}", "is not a classifier run",
        store="shared"),
    Row("tune-classifier-none-trained", "tune --data {data}", "no classifier for fashion-mnist at 28 px"),
    Row("tune-experiment-empty", "tune --data {data} --experiment ''", "Invalid experiment name"),
    Row("tune-register-slash", "tune --data {data} --register a/b", "Names cannot contain '/'"),
    Row("tune-alias-reserved", "tune --data {data} --register best --alias latest", "reserved"),
    Row("tune-alias-without-register", "tune --data {data} --alias best", "add --register NAME"),
    Row("tune-resume-nothing-to-resume", "tune --data {data} --resume", "no unfinished sweep in experiment",
        store="shared"),
    Row("tune-storage-path-a-file", "tune --data {data} --storage-path {file}", "is a file, not a directory"),
    Row("tune-address-nobody-listens", "tune --data {data} --address {dead}", "cannot reach a Ray cluster at"),
    Row("tune-trials-zero", "tune --data {data} --trials 0", "--trials and --reports must be >= 1"),
    Row("tune-scheduler-unknown", "tune --data {data} --scheduler nope", "unknown scheduler 'nope'"),
    Row("tune-steps-not-a-multiple-of-reports", "tune --data {data} --steps 10 --reports 3",
        "must be a multiple of --reports"),
    Row("tune-reports-zero", "tune --data {data} --reports 0", "--trials and --reports must be >= 1"),
    Row("tune-reports-too-few-for-pbt", "tune --data {data} --scheduler pbt --reports 2 --steps 10",
        "--scheduler pbt needs --reports 3 or more"),
    Row("tune-trial-workers-zero", "tune --data {data} --trial-workers 0", "--trial-workers must be >= 1"),
    Row("tune-gpus-per-trial-negative", "tune --data {data} --gpus-per-trial -1", "--gpus-per-trial must be >= 0"),
    Row("tune-gpus-per-trial-without-gpus", "tune --data {data} --gpus-per-trial 1",
        "no GPU in the Ray cluster: drop --gpus-per-trial", store="shared", ray=True),
    Row("tune-max-concurrent-zero", "tune --data {data} --max-concurrent 0", "--max-concurrent must be >= 1"),
    Row("tune-seed-negative", "tune --data {data} --seed -1", "--seed must be zero or positive"),
    Row("tune-objective-samples-zero", "tune --data {data} --objective-samples 0", "--objective-samples must be >= 2"),
    Row("tune-tracking-server-unreachable", "tune --data {data}", "cannot reach the MLflow tracking server at",
        store="unreachable"),
    # --- quickstart -----------------------------------------------------------------------------
    Row("quickstart-steps-zero", "quickstart --steps 0", "--steps must be >= 1"),
    Row("quickstart-steps-not-a-number", "quickstart --steps many", "Invalid value for '--steps'"),
    Row("quickstart-tracking-server-unreachable", "quickstart", "cannot reach the MLflow tracking server at",
        store="unreachable"),
    # --- train-classifier -----------------------------------------------------------------------
    Row("train-classifier-DATA-missing", "train-classifier {tmp}/nowhere", "is not a prepared dataset"),
    Row("train-classifier-epochs-zero", "train-classifier {data} --epochs 0", "--epochs and --batch must be >= 1"),
    Row("train-classifier-batch-zero", "train-classifier {data} --batch 0", "--epochs and --batch must be >= 1"),
    Row("train-classifier-lr-zero", "train-classifier {data} --lr 0", "--lr > 0"),
    Row("train-classifier-test-split-absent", "train-classifier {data}", "has no 'test' split"),
    Row("train-classifier-seed-negative", "train-classifier {data} --seed -1", "--seed must be zero or positive"),
    Row("train-classifier-experiment-empty", "train-classifier {data} --test-split train --experiment ''",
        "Invalid experiment name"),
    Row("train-classifier-tracking-server-unreachable", "train-classifier {data} --test-split train",
        "cannot reach the MLflow tracking server at", store="unreachable"),
    # --- evaluate -------------------------------------------------------------------------------
    Row("evaluate-RUN_ID-no-store", "evaluate 0123456789abcdef", "a store that does not exist"),
    Row("evaluate-RUN_ID-unknown", "evaluate 0123456789abcdef", "no MLflow run", store="shared"),
    Row("evaluate-RUN_ID-not-a-train-run", "evaluate {other_run}", "is not a wganctl training run", store="shared"),
    Row("evaluate-n-too-few", "evaluate {train_run} --n 5", "--n must be at least 20", store="shared"),
    Row("evaluate-metrics-unknown", "evaluate {train_run} --metrics sharpness", "unknown metric(s) sharpness",
        store="shared"),
    Row("evaluate-features-unknown", "evaluate {train_run} --features nope", "unknown feature extractor 'nope'",
        store="shared"),
    Row("evaluate-inception-weights-none", "evaluate {train_run} --features inception",
        "--features inception needs --inception-weights FILE", store="shared"),
    Row("evaluate-inception-weights-missing",
        "evaluate {train_run} --features inception --inception-weights {tmp}/nowhere.pth", "no Inception weights at",
        store="shared"),
    Row("evaluate-metrics-coverage-with-inception",
        "evaluate {train_run} --features inception --metrics coverage --inception-weights {file}",
        "drop coverage from --metrics", store="shared"),
    Row("evaluate-classifier-unknown", "evaluate {train_run} --classifier 0123456789abcdef", "no MLflow run",
        store="shared"),
    Row("evaluate-classifier-not-a-classifier", "evaluate {train_run} --classifier {other_run}",
        "is not a classifier run", store="shared"),
    Row("evaluate-checkpoint-not-saved", "evaluate {train_run} --checkpoint 5", "has no checkpoint at step 5",
        store="shared"),
    Row("evaluate-checkpoint-best-without-eval-every", "evaluate {train_run} --checkpoint best",
        "has no best checkpoint: it trained without --eval-every", store="shared"),
    Row("evaluate-seed-not-a-number", "evaluate {train_run} --seed s", "Invalid value for '--seed'"),
    Row("evaluate-address-nobody-listens", "evaluate {train_run} --address {dead}", "cannot reach a Ray cluster at",
        store="shared"),
    Row("evaluate-gpu-without-gpus", "evaluate {train_run} --gpu", "no GPU in the Ray cluster: drop --gpu",
        store="shared", ray=True),
    Row("evaluate-tracking-server-unreachable", "evaluate {train_run}", "cannot reach the MLflow tracking server at",
        store="unreachable"),
    # --- compare --------------------------------------------------------------------------------
    Row("compare-RUN_IDS-none", "compare", "Missing argument"),
    Row("compare-RUN_IDS-unknown", "compare 0123456789abcdef", "no MLflow run", store="shared"),
    Row("compare-RUN_IDS-not-evaluated", "compare {train_run}", "has no evaluation", store="shared"),
    Row("compare-out-jpg", "compare {train_run} --out x.jpg", "unsupported output x.jpg: use a .png file",
        store="shared"),
    Row("compare-tracking-server-unreachable", "compare {train_run}", "cannot reach the MLflow tracking server at",
        store="unreachable"),
    # --- server ---------------------------------------------------------------------------------
    Row("server-port-zero", "server --port 0", "--port 0 is not a TCP port"),
    Row("server-port-not-a-number", "server --port http", "Invalid value for '--port'"),
    Row("server-port-taken", "server --port {busy_port}", "cannot listen on 127.0.0.1:"),
    Row("server-host-not-this-machine", "server --host 203.0.113.7", "an address of this machine"),
    Row("server-workers-zero", "server --workers 0", "--workers must be at least 1"),
    Row("server-backend-store-uri-a-path", "server --backend-store-uri mlflow.db", "is not a database URI"),
    Row("server-backend-store-uri-file-store", "server --backend-store-uri file:///tmp/mlruns",
        "not a file store"),
    Row("server-backend-store-uri-directory-missing", "server --backend-store-uri sqlite:///{tmp}/nowhere/m.db",
        "does not exist"),
    Row("server-artifacts-destination-a-file", "server --artifacts-destination {file}",
        "is a file, not a directory"),
    Row("server-basic-auth-without-secret", "server --host 0.0.0.0 --basic-auth",
        "--basic-auth needs MLFLOW_FLASK_SERVER_SECRET_KEY"),
    # --- experiment augment ---------------------------------------------------------------------
    Row("augment-data-none", "experiment augment --real-per-class 5", "Missing option '--data'"),
    Row("augment-data-missing", "experiment augment --data {tmp}/nowhere --real-per-class 5",
        "is not a prepared dataset"),
    Row("augment-data-without-test-split", "experiment augment --data {data} --real-per-class 5",
        "needs class labels and train and test splits"),
    Row("augment-real-per-class-zero", "experiment augment --data {data} --real-per-class 0",
        "--real-per-class, --seeds and --steps must be >= 1"),
    Row("augment-real-per-class-none", "experiment augment --data {data}", "Missing option '--real-per-class'"),
    Row("augment-synthetic-per-class-zero",
        "experiment augment --data {data} --real-per-class 5 --synthetic-per-class 0",
        "--synthetic-per-class must be >= 1"),
    Row("augment-seeds-zero", "experiment augment --data {data} --real-per-class 5 --seeds 0",
        "--real-per-class, --seeds and --steps must be >= 1"),
    Row("augment-steps-zero", "experiment augment --data {data} --real-per-class 5 --steps 0",
        "--real-per-class, --seeds and --steps must be >= 1"),
    Row("augment-experiment-empty", "experiment augment --data {data} --real-per-class 5 --experiment ''",
        "Invalid experiment name"),
    Row("augment-address-nobody-listens", "experiment augment --data {data} --real-per-class 5 --address {dead}",
        "cannot reach a Ray cluster at"),
]


def _store(root: Path, data: str) -> dict[str, str]:
    """The shared store: a train run (logged, never trained: no checkpoint, no generator), a
    classifier run on the same data (untrained weights: enough to be found and loaded), and a
    run that is neither. Its artifacts go under ``root`` (MLflow resolves ./mlruns from the cwd)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        client = MlflowClient(uri)
        manifest, sha256 = load_manifest(data), manifest_sha256(data)
        cfg = TrainConfig(width=8, image_size=manifest["size"], channels=manifest["channels"]).resolved()
        train_run = tracking.start_train_run(client, "bad-input", cfg, RunSettings(storage_path=str(root / "ckpt")),
                                             data_dir=data, manifest=manifest, manifest_sha256=sha256)
        spec = ClassifierSpec(channels=manifest["channels"], image_size=manifest["size"],
                              num_classes=len(manifest["class_names"]))
        classifier_run = client.create_run(tracking.experiment_id(client, "bad-input"), tags={
            run_tags.STAGE: "classifier", run_tags.DATA_DATASET: manifest["dataset"],
            run_tags.DATA_MANIFEST_SHA256: sha256}).info.run_id
        client.log_batch(classifier_run, params=[mlflow.entities.Param(k, str(v)) for k, v in spec.to_dict().items()])
        weights = root / "classifier.pt"
        torch.save({"format_version": 1, "spec": spec.to_dict(), "state_dict": Classifier(spec).state_dict()}, weights)
        client.log_artifact(classifier_run, str(weights))
        weights.unlink()
        client.set_terminated(classifier_run, status="FINISHED")
        other_run = client.create_run(tracking.experiment_id(client, "other")).info.run_id
    return {"store_uri": uri, "train_run": train_run, "classifier_run": classifier_run, "other_run": other_run}


@pytest.fixture(scope="module")
def world(tiny_dataset, tmp_path_factory):
    """What the rows' placeholders name, made once for the module."""
    root = tmp_path_factory.mktemp("bad-input")
    (root / "a-file").write_text("not a directory\n")
    broken = root / "broken-data"
    broken.mkdir()
    (broken / "manifest.json").write_text("{ not json")
    configs = {"cfg_yaml": "lr: [1, 2\n", "cfg_list": "- 1\n- 2\n", "cfg_key": "lamda_gp: 5\n", "cfg_type": "batch: many\n"}
    for name, text in configs.items():
        (root / f"{name}.yaml").write_text(text)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    values = {"data": tiny_dataset, "root": str(root), "file": str(root / "a-file"), "broken": str(broken),
              "dead": f"127.0.0.1:{free_port()}", "busy_port": str(busy.getsockname()[1]),
              **{name: str(root / f"{name}.yaml") for name in configs}, **_store(root, tiny_dataset)}
    yield values
    busy.close()


def _snapshot(*roots: str | Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``roots``, with its size and modification time."""
    found = {}
    for root in roots:
        for directory, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(directory, name)
                info = os.stat(path)
                found[path] = (info.st_size if name in files else 0, info.st_mtime_ns)
    return found


def _forbid_ray(monkeypatch) -> None:
    """A stage that gets as far as starting (or joining) Ray fails the row."""

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for bad input that is knowable before it")

    for module in (pipelines.train, pipelines.prepare, pipelines.evaluate, pipelines.augment,
                   pipelines.cluster.connect):
        monkeypatch.setattr(module, "init_ray", refuse)
    monkeypatch.setattr(ray, "init", refuse)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_one_line_exit_2_and_nothing_written(row, world, tmp_path, monkeypatch):
    values = {**world, "tmp": str(tmp_path)}
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)  # the CLI's default applies
    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY", raising=False)
    store = {"fresh": f"sqlite:///{tmp_path / 'mlflow.db'}", "shared": world["store_uri"],
             "unreachable": f"http://{world['dead']}"}[row.store]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    for key, value in row.env.items():
        monkeypatch.setenv(key, value.format(**values))
    if not row.ray:
        _forbid_ray(monkeypatch)
    if row.autoscaler is not None:
        monkeypatch.setattr(GlobalState, "get_max_resources_from_cluster_config", lambda self: row.autoscaler)
    before = _snapshot(tmp_path, world["root"], world["data"])

    result = CliRunner().invoke(app, shlex.split(row.args.format(**values)))

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    assert lines[0].startswith("error: ") and row.message in lines[0], lines[0]
    assert result.stdout == "", result.stdout
    assert _snapshot(tmp_path, world["root"], world["data"]) == before
