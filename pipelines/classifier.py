"""The classifier stage: train the project classifier on a prepared dataset, log it as its own MLflow run.

Its penultimate layer is the feature space of `wganctl evaluate` (docs/architecture.md,
section 4). Plain single-process PyTorch: a few epochs of a small CNN need no cluster.
The run records the floor of the Frechet distance in these features, FD(test split,
train split): two samples of real data are this far apart, so no generator can be
expected to score below it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient

from wgan.classifier import Classifier, ClassifierSpec, fit
from wgan.data.rows import split_manifest
from wgan.data.manifest import load_manifest, manifest_sha256
from wgan.data.reader import ShardReader
from wgan.errors import UserError
from wgan.metrics import frechet_distance
from pipelines import tracking
from pipelines.tracking import run_tags
from pipelines.stage_options import ClassifierOptions

STAGE = "classifier"
MODEL_NAME = "classifier"
WEIGHTS_ARTIFACT = "classifier.pt"  # {"format_version", "spec", "state_dict"}: loads with weights_only=True
FORMAT_VERSION = 1
FEATURE_BATCH = 1000


@dataclass
class ClassifierResult:
    run_id: str
    test_accuracy: float
    fd_test_vs_train: float | None  # None when the test split is the train split
    model_uri: str


def split_reader(data_dir: str, manifest: dict, split: str, batch: int, *, shuffle: bool, seed: int = 0) -> ShardReader:
    return ShardReader(data_dir, batch, shuffle=shuffle, seed=seed, manifest=split_manifest(data_dir, manifest, split))


@torch.no_grad()
def features_and_logits(model: Classifier, batches) -> tuple[np.ndarray, np.ndarray]:
    """(N, feature_dim) features and (N, K) logits, float32, of an iterable of image batches (float NCHW in [-1, 1])."""
    model.eval()
    features, logits = [], []
    for images in batches:
        hidden = model.features(images)
        features.append(hidden.numpy())
        logits.append(model.head(hidden).numpy())
    return np.concatenate(features), np.concatenate(logits)


def _labelled_features(model: Classifier, reader: ShardReader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, logits and labels of every row a reader yields, in one pass."""
    labels: list[np.ndarray] = []

    def images():
        for batch_images, batch_labels in reader:
            labels.append(batch_labels.numpy())
            yield batch_images

    features, logits = features_and_logits(model, images())
    return features, logits, np.concatenate(labels)


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _fit(model: Classifier, reader: ShardReader, epochs: int, lr: float, progress: bool) -> list[float]:
    steps_per_epoch = -(-reader.manifest["count"] // reader.batch_size)
    start = [time.perf_counter()]

    def epoch_batches(epoch: int):
        reader.set_epoch(epoch)
        start[0] = time.perf_counter()
        return iter(reader)

    def log(epoch: int, loss: float, count: int) -> None:
        _log(progress, f"epoch {epoch + 1}/{epochs}: loss {loss:.4f} ({count / (time.perf_counter() - start[0]):.0f} img/s)")

    return fit(model, epoch_batches, steps_per_epoch, epochs, lr, log)


def _start_run(client: MlflowClient, experiment: str, data_dir: str, manifest: dict, params: dict) -> str:
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, tags={
        run_tags.STAGE: STAGE,
        run_tags.DATA_MANIFEST_SHA256: manifest_sha256(data_dir),
        run_tags.DATA_DATASET: str(manifest.get("dataset")),
        run_tags.DATA_DIR: data_dir,
        run_tags.CODE_VERSION: tracking.code_version(),
        run_tags.RUN_NAME: f"classifier-{manifest.get('dataset')}-{manifest['size']}px",
    })
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def _log_model(client: MlflowClient, run_id: str, model: Classifier) -> str:
    """The state dict artifact (what evaluate and tune load) and an MLflow pytorch model (for serving)."""
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / WEIGHTS_ARTIFACT
        torch.save({"format_version": FORMAT_VERSION, "spec": model.spec.to_dict(), "state_dict": model.state_dict()},
                   weights)
        client.log_artifact(run_id, str(weights))
    spec = model.spec
    example = np.zeros((2, spec.channels, spec.image_size, spec.image_size), dtype=np.float32)
    with torch.no_grad():
        example_logits = model.eval()(torch.from_numpy(example)).numpy()
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        # "pt2" (torch.export): a traced graph that loads without this package and without unpickling.
        # torch's local version tag (+cu130, +cpu) names a build, not a requirement pip can resolve.
        info = mlflow.pytorch.log_model(model, name=MODEL_NAME, serialization_format="pt2",
                                        signature=infer_signature(example, example_logits), input_example=example,
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    return info.model_uri


def train_classifier(data_dir: str, options: ClassifierOptions | None = None, *, experiment: str = "wganctl",
                     progress: bool = True) -> ClassifierResult:
    """Train the project classifier on ``options.train_split``, measure it on ``options.test_split``, log
    both as one MLflow run.

    A dataset without a test split (e.g. prepared with ``--split train``) needs
    ``test_split="train"``: the accuracy is then on training images, and the run says so
    in its ``test_split`` parameter.
    """
    options = (options or ClassifierOptions()).validate()
    epochs, batch, lr, seed = options.epochs, options.batch, options.lr, options.seed
    train_split, test_split = options.train_split, options.test_split
    tracking.check_experiment_name(experiment)
    manifest = load_manifest(data_dir, verify=True)
    if not manifest["class_names"]:
        raise UserError(f"{data_dir} has no class labels: the classifier needs a labelled dataset")
    train_reader = split_reader(data_dir, manifest, train_split, batch, shuffle=True, seed=seed)
    test_reader = split_reader(data_dir, manifest, test_split, FEATURE_BATCH, shuffle=False)
    spec = ClassifierSpec(channels=manifest["channels"], image_size=manifest["size"],
                          num_classes=len(manifest["class_names"]))
    params = {"epochs": epochs, "batch": batch, "lr": lr, "seed": seed, "train_split": train_split,
              "test_split": test_split, "data_dir": data_dir, **spec.to_dict()}

    client = tracking.client()
    run_id = _start_run(client, experiment, data_dir, manifest, params)
    try:
        torch.manual_seed(seed)
        model = Classifier(spec)
        losses = _fit(model, train_reader, epochs, lr, progress)
        test_features, test_logits, test_labels = _labelled_features(model, test_reader)
        accuracy = float(np.mean(test_logits.argmax(1) == test_labels))
        floor = None
        if test_split != train_split:
            train_features, _ = features_and_logits(
                model, (x for x, _ in split_reader(data_dir, manifest, train_split, FEATURE_BATCH, shuffle=False)))
            floor = frechet_distance(test_features, train_features)
        now = int(time.time() * 1000)
        metrics = [mlflow.entities.Metric("train_loss", loss, now, epoch + 1) for epoch, loss in enumerate(losses)]
        metrics.append(mlflow.entities.Metric("test_accuracy", accuracy, now, epochs))
        if floor is not None:
            metrics.append(mlflow.entities.Metric("fd_test_vs_train", floor, now, epochs))
        client.log_batch(run_id, metrics=metrics)
        model_uri = _log_model(client, run_id, model)
    except KeyboardInterrupt:
        client.set_terminated(run_id, status="KILLED")
        raise
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    _log(progress, f"test accuracy ({test_split} split): {accuracy:.4f}")
    return ClassifierResult(run_id=run_id, test_accuracy=accuracy, fd_test_vs_train=floor, model_uri=model_uri)


def load_classifier(run_id: str) -> Classifier:
    """The classifier of a `train-classifier` run, from its state dict artifact (no unpickling), in eval mode."""
    client = tracking.client(needs=f"classifier run {run_id!r}")
    run = tracking.get_run(client, run_id)
    if run.data.tags.get(run_tags.STAGE) != STAGE:
        raise UserError(f"MLflow run {run_id} is not a classifier run: give the id printed by `wganctl train-classifier`")
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(f"{run.info.artifact_uri}/{WEIGHTS_ARTIFACT}", dst_path=tmp)
        payload = torch.load(path, map_location="cpu", weights_only=True)
    model = Classifier(ClassifierSpec(**payload["spec"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def find_classifier(client: MlflowClient | None, manifest: dict) -> str:
    """The newest finished classifier run on the dataset, image size and channels of ``manifest``: the
    rule of every stage that measures in the classifier's features (evaluate, train --eval-every)."""
    dataset = str(manifest.get("dataset")).replace("'", "")
    experiments = [e.experiment_id for e in client.search_experiments()] if tracking.store_exists() else []
    found = experiments and client.search_runs(
        experiments,
        filter_string=(f"tags.`{run_tags.STAGE}` = '{STAGE}' and tags.`{run_tags.DATA_DATASET}` = '{dataset}' "
                       f"and params.image_size = '{manifest['size']}' and params.channels = '{manifest['channels']}' "
                       f"and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        raise UserError(f"no classifier for {dataset} at {manifest['size']} px in {tracking.tracking_uri()}: "
                        f"train one with `wganctl train-classifier DIR` on a prepared {dataset} with train and test splits")
    return found[0].info.run_id


def matching_classifier(client: MlflowClient, classifier_run: str, manifest: dict, measured: str) -> Classifier:
    """The classifier, refused unless it was trained on the dataset of ``manifest`` at its size, channels
    and classes (``measured``: what would be measured in its features, for the message)."""
    classifier = load_classifier(classifier_run)
    spec, dataset = classifier.spec, manifest.get("dataset")
    trained_on = client.get_run(classifier_run).data.tags.get(run_tags.DATA_DATASET)
    if trained_on != dataset or (spec.image_size, spec.channels, spec.num_classes) != (
            manifest["size"], manifest["channels"], len(manifest["class_names"] or [])):
        raise UserError(f"classifier run {classifier_run} was trained on {trained_on} at {spec.image_size} px, "
                        f"{spec.channels} channel(s), {spec.num_classes} classes; {measured} on {dataset} at "
                        f"{manifest['size']} px, {manifest['channels']}, {len(manifest['class_names'] or [])}: "
                        f"train a classifier on matching data with `wganctl train-classifier`")
    return classifier
