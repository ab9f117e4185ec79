"""The evaluate stage: sample a logged generator, measure the samples in classifier features, log into its run.

Contract (metric names, artifacts, the reference cache): docs/architecture.md, section 4.
Everything runs in one process, without Ray tasks: sampling and the small classifier
handle ~10^4 images in seconds on a CPU, less than a Ray start costs. The
reference features (the run's whole prepared dataset) are computed once per
(dataset, classifier) and cached beside the manifest.
"""

from __future__ import annotations

import io
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import torch
from mlflow.tracking import MlflowClient

from wgan.classifier import Classifier
from wgan.data import fs as datafs
from wgan.data.images import unpack_images
from wgan.data.manifest import load_manifest, manifest_sha256, shard_paths
from wgan.data.reader import ShardReader, pixels_to_tensor
from wgan.errors import UserError
from wgan.images import grid
from wgan.metrics import (class_coverage, feature_statistics, frechet_distance_from_statistics, inception_score,
                          kernel_inception_distance, nearest_neighbours, precision_recall)
from pipelines import tracking
from pipelines.classifier import FEATURE_BATCH, STAGE as CLASSIFIER_STAGE, features_and_logits, load_classifier
from pipelines.sample import load_generator

METRICS = ("fid", "kid", "pr", "coverage", "is")
DEFAULT_METRICS = ("fid", "kid", "pr", "coverage")
FEATURES = ("classifier",)
REFERENCE_DIR = "reference"
GRID_IMAGES = 64
NEIGHBOUR_ROWS, NEIGHBOURS = 8, 5  # memorisation picture: 8 samples, each beside its 5 nearest training images


@dataclass
class EvaluationResult:
    run_id: str
    metrics: dict[str, float]  # as logged, "eval/..." names
    classifier_run: str
    reference: str  # the reference-features cache file


@dataclass
class Reference:
    features: np.ndarray  # (rows, feature_dim) float32, in the dataset's row order
    mu: np.ndarray
    sigma: np.ndarray


def evaluate(run_id: str, *, n: int = 10000, metrics: tuple[str, ...] = DEFAULT_METRICS,
             features: str = "classifier", classifier_run: str | None = None, seed: int = 0) -> EvaluationResult:
    """Sample ``n`` images from run ``run_id``'s generator, compute ``metrics`` against its training data, log them."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise UserError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(METRICS)}")
    if features not in FEATURES:
        raise UserError(f"unknown feature extractor {features!r}: choose from {', '.join(FEATURES)}")
    if n < 20:
        raise UserError(f"--n must be at least 20 (precision/recall, KID and IS need several samples), got {n}")
    client = MlflowClient(tracking.tracking_uri())
    run = tracking.get_run(client, run_id)
    if run.data.tags.get("wganctl.stage") != "train":
        raise UserError(f"MLflow run {run_id} is not a wganctl training run: give the id of one")
    data_dir = run.data.params["data_dir"]
    manifest = _training_manifest(run, data_dir)
    classifier_run = classifier_run or find_classifier(client, run)
    classifier = _matching_classifier(client, classifier_run, run, manifest)
    reference, cache = reference_features(data_dir, classifier, classifier_run, manifest)

    images = draw_samples(run_id, n, seed)
    sample_features, sample_logits = features_and_logits(classifier, _batches(images))
    results, predicted = {}, sample_logits.argmax(1)
    if "fid" in metrics:
        results["eval/fid"] = frechet_distance_from_statistics(*feature_statistics(sample_features),
                                                               reference.mu, reference.sigma)
    if "kid" in metrics:
        results["eval/kid_mean"], results["eval/kid_std"] = kernel_inception_distance(sample_features,
                                                                                      reference.features, seed=seed)
    if "pr" in metrics:
        # equally sized sets, as Kynkäänniemi et al. 2019 compare them
        subset = np.random.default_rng(seed).choice(len(reference.features), min(n, len(reference.features)),
                                                    replace=False)
        results["eval/precision"], results["eval/recall"] = precision_recall(sample_features,
                                                                             reference.features[subset])
    if "is" in metrics:
        probabilities = torch.from_numpy(sample_logits).softmax(1).numpy()
        results["eval/is_mean"], results["eval/is_std"] = inception_score(probabilities)
    coverage = class_coverage(predicted, len(manifest["class_names"]))
    if "coverage" in metrics:
        results["eval/coverage_classes"] = float(coverage.covered)
        results["eval/coverage_min_share"] = float(coverage.shares.min())

    step = int(run.data.tags.get("wganctl.completed_steps", "0"))
    _log_evaluation(client, run_id, results, step, tags={
        "eval.features": features, "eval.classifier_run": classifier_run, "eval.n": str(n), "eval.seed": str(seed),
        "eval.metrics": ",".join(metrics)})
    _log_pictures(client, run_id, images, sample_features, reference.features, data_dir, manifest, coverage)
    return EvaluationResult(run_id=run_id, metrics=results, classifier_run=classifier_run, reference=cache)


def _training_manifest(run, data_dir: str) -> dict:
    """The manifest of the data the run trained on; refused if the directory now holds other data."""
    manifest = load_manifest(data_dir, verify=False)
    if manifest_sha256(data_dir) != run.data.tags.get("data.manifest_sha256"):
        raise UserError(f"{data_dir} no longer holds the data run {run.info.run_id} trained on (manifest sha256 differs): "
                        f"prepare that data again at {data_dir} to evaluate against it")
    if not manifest["class_names"]:
        raise UserError(f"{data_dir} has no class labels: classifier features need a labelled dataset")
    return manifest


def find_classifier(client: MlflowClient, run) -> str:
    """The newest finished classifier run on the same dataset, image size and channels as ``run``."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    dataset = run.data.tags.get("data.dataset", "").replace("'", "")
    found = client.search_runs(
        experiments,
        filter_string=(f"tags.`wganctl.stage` = '{CLASSIFIER_STAGE}' and tags.`data.dataset` = '{dataset}' "
                       f"and params.image_size = '{run.data.params['image_size']}' "
                       f"and params.channels = '{run.data.params['channels']}' and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        raise UserError(f"no classifier for {dataset} at {run.data.params['image_size']} px in {tracking.tracking_uri()}: "
                        f"train one with `wganctl train-classifier DIR` on a prepared {dataset} with train and test splits")
    return found[0].info.run_id


def _matching_classifier(client: MlflowClient, classifier_run: str, run, manifest: dict) -> Classifier:
    """The classifier, refused unless it was trained on the same dataset at the same size, channels and classes."""
    classifier = load_classifier(classifier_run)
    spec, dataset = classifier.spec, run.data.tags.get("data.dataset")
    trained_on = client.get_run(classifier_run).data.tags.get("data.dataset")
    if trained_on != dataset or (spec.image_size, spec.channels, spec.num_classes) != (
            manifest["size"], manifest["channels"], len(manifest["class_names"])):
        raise UserError(f"classifier run {classifier_run} was trained on {trained_on} at {spec.image_size} px, "
                        f"{spec.channels} channel(s), {spec.num_classes} classes; run {run.info.run_id} on {dataset} at "
                        f"{manifest['size']} px, {manifest['channels']}, {len(manifest['class_names'])}: "
                        f"train a classifier on matching data with `wganctl train-classifier`")
    return classifier


def reference_features(data_dir: str, classifier: Classifier, classifier_run: str,
                       manifest: dict | None = None) -> tuple[Reference, str]:
    """Classifier features of every row of the dataset, from ``<data_dir>/reference/classifier-<run>.npz``
    or computed and cached there; also the cache's location.

    The cache stores the manifest sha256 it was computed from; a mismatch (the data was
    prepared again in place) recomputes it.
    """
    manifest = manifest or load_manifest(data_dir, verify=False)
    sha = manifest_sha256(data_dir)
    location = datafs.join(datafs.absolute(data_dir), REFERENCE_DIR, f"classifier-{classifier_run}.npz")
    filesystem, path = datafs.resolve(location)
    if datafs.exists(filesystem, path):
        with filesystem.open_input_file(path) as handle:
            cached = np.load(io.BytesIO(handle.read()))
        if str(cached["manifest_sha256"]) == sha:
            return Reference(cached["features"], cached["mu"], cached["sigma"]), location
    load_manifest(data_dir, verify=True)  # the features will be trusted from now on: check every shard once
    reader = ShardReader(data_dir, FEATURE_BATCH, shuffle=False, manifest=manifest)
    features, _ = features_and_logits(classifier, (images for images, _ in reader))
    mu, sigma = feature_statistics(features)
    buffer = io.BytesIO()
    np.savez(buffer, features=features, mu=mu, sigma=sigma, manifest_sha256=np.array(sha))
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    partial = f"{path}.tmp-{uuid.uuid4().hex[:8]}"  # readers never see a half-written cache
    with filesystem.open_output_stream(partial) as out:
        out.write(buffer.getvalue())
    filesystem.move(partial, path)
    return Reference(features, mu, sigma), location


def reference_statistics(data_dir: str, classifier: Classifier, classifier_run: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the dataset's classifier features (cached as in ``reference_features``)."""
    reference, _ = reference_features(data_dir, classifier, classifier_run)
    return reference.mu, reference.sigma


def draw_samples(run_id: str, n: int, seed: int) -> np.ndarray:
    """(n, H, W, C) uint8 samples of the run's logged generator from latents seeded with ``seed``."""
    model, z_dim = load_generator(run_id)
    z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.concatenate([np.asarray(model.predict(z[start:start + FEATURE_BATCH]), dtype=np.uint8)
                           for start in range(0, n, FEATURE_BATCH)])


def read_rows(data_dir: str, manifest: dict, rows: np.ndarray) -> np.ndarray:
    """(len(rows), H, W, C) uint8 images of the dataset's global row numbers (row order of section 1)."""
    starts = np.cumsum([0] + [shard["rows"] for shard in manifest["shards"]])
    out = np.empty((len(rows), manifest["size"], manifest["size"], manifest["channels"]), dtype=np.uint8)
    paths = shard_paths(data_dir, manifest)
    for shard in np.unique(np.searchsorted(starts, rows, side="right") - 1):
        wanted = np.flatnonzero((rows >= starts[shard]) & (rows < starts[shard + 1]))
        filesystem, path = datafs.resolve(paths[shard])
        with filesystem.open_input_file(path) as handle:
            column = pq.read_table(handle, columns=["image"]).column(0).take(rows[wanted] - starts[shard])
        out[wanted] = unpack_images(column, manifest["size"], manifest["channels"])
    return out


def _batches(images: np.ndarray):
    for start in range(0, len(images), FEATURE_BATCH):
        yield pixels_to_tensor(images[start:start + FEATURE_BATCH])


def _log_evaluation(client: MlflowClient, run_id: str, results: dict[str, float], step: int, tags: dict) -> None:
    """Metrics at the run's completed generator step (a later evaluation after `--resume` adds a point), and tags:
    tags, not params, because params are write-once and a run may be evaluated again."""
    timestamp = int(mlflow.utils.time.get_current_time_millis())
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), timestamp, step) for k, v in results.items()],
                     tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])


def _log_pictures(client: MlflowClient, run_id: str, images: np.ndarray, sample_features: np.ndarray,
                  reference_features: np.ndarray, data_dir: str, manifest: dict, coverage) -> None:
    client.log_image(run_id, _gray_squeezed(grid(images[:GRID_IMAGES])), artifact_file="eval/grid.png")
    shown = min(NEIGHBOUR_ROWS, len(images))
    _, nearest = nearest_neighbours(sample_features[:shown], reference_features, k=NEIGHBOURS)
    neighbours = read_rows(data_dir, manifest, nearest.reshape(-1)).reshape(shown, NEIGHBOURS, *images.shape[1:])
    rows = np.concatenate([images[:shown, None], neighbours], axis=1).reshape(-1, *images.shape[1:])
    client.log_image(run_id, _gray_squeezed(grid(rows, nrow=NEIGHBOURS + 1)), artifact_file="eval/nearest_neighbours.png")
    client.log_figure(run_id, _class_histogram(coverage, manifest["class_names"]), "eval/class_histogram.png")


def _gray_squeezed(picture: np.ndarray) -> np.ndarray:
    return picture.squeeze(-1) if picture.shape[-1] == 1 else picture


def _class_histogram(coverage, class_names: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = coverage.num_classes
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * k), 3.2))
    ax.bar(range(k), coverage.shares)
    ax.axhline(1 / k, color="gray", lw=0.8, label="fair share 1/K")
    ax.axhline(1 / (2 * k), color="red", lw=0.8, ls="--", label="covered from 1/(2K)")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share of samples")
    ax.set_title(f"predicted classes: {coverage.covered}/{k} covered")
    ax.legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def compare(run_ids: list[str], out: str | Path | None = None) -> tuple[str, Path | None]:
    """A text table of the runs' latest eval metrics and, with ``out``, their eval grids side by side in one PNG."""
    if not run_ids:
        raise UserError("give at least one run id")
    client = MlflowClient(tracking.tracking_uri())
    runs = [tracking.get_run(client, run_id) for run_id in run_ids]
    for run in runs:
        if not any(key.startswith("eval/") for key in run.data.metrics):
            raise UserError(f"run {run.info.run_id} has no evaluation: run `wganctl evaluate {run.info.run_id}` first")
    keys = sorted({key for run in runs for key in run.data.metrics if key.startswith("eval/")})
    header = ["run", "name", "step"] + [key.removeprefix("eval/") for key in keys]
    lines = [[run.info.run_id[:12], run.info.run_name or "", run.data.tags.get("wganctl.completed_steps", "")]
             + [f"{run.data.metrics[key]:.4g}" if key in run.data.metrics else "-" for key in keys] for run in runs]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    table = "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [header, *lines])
    return table, (_side_by_side_grids(runs, Path(out)) if out is not None else None)


def _side_by_side_grids(runs: list, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    if out.suffix != ".png":
        raise UserError(f"unsupported output {out.name}: use a .png file")
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 4.4), squeeze=False)
    with tempfile.TemporaryDirectory() as tmp:
        for ax, run in zip(axes[0], runs):
            picture = mlflow.artifacts.download_artifacts(f"{run.info.artifact_uri}/eval/grid.png", dst_path=tmp)
            ax.imshow(np.asarray(Image.open(picture)), cmap="gray")
            fid = run.data.metrics.get("eval/fid")
            ax.set_title(f"{run.info.run_name or run.info.run_id[:12]}" + (f"\nFID {fid:.3g}" if fid is not None else ""),
                         fontsize=8)
            ax.axis("off")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
