"""The evaluate stage: sample a logged generator, measure the samples in classifier features, log into its run.

Contract (metric names, artifacts, the reference cache): docs/architecture.md, section 4.
Sampling and feature extraction run as Ray Data batch inference
(`pipelines.cluster.batch_inference`): actor pools over batches, on GPUs with ``gpu``, so a
50,000-sample evaluation spreads over a cluster. The reference features (the run's
whole prepared dataset) are computed once per (dataset, classifier) and cached
beside the manifest.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.fs as pafs
import torch
from mlflow.tracking import MlflowClient

from wgan.data.rows import dataset_labels, read_rows
from wgan.data.manifest import file_sha256, load_manifest, manifest_sha256
from wgan.errors import UserError
from wgan.images import grid
from wgan.metrics import (class_coverage, feature_statistics, frechet_distance_from_statistics, inception_score,
                          kernel_inception_distance, nearest_neighbours, precision_recall)
from pipelines import tracking
from pipelines.tracking import run_tags
from pipelines.cluster.batch_inference import (checkpoint_generator, classifier_extractor, inception_extractor,
                                       latents, logged_generator, model_sampler, sample_and_embed)
from pipelines.classifier import FEATURE_BATCH, find_classifier, matching_classifier
from pipelines.cluster import checkpoints
from pipelines.cluster.reference import Reference, reference_features
from pipelines.cluster.connect import check_placeable, init_ray, through_ray_client
from pipelines.stage_options import EvaluateOptions

GRID_IMAGES = 64
NEIGHBOUR_ROWS, NEIGHBOURS = 8, 5  # memorisation picture: 8 samples, each beside its 5 nearest training images


@dataclass
class EvaluationResult:
    run_id: str
    metrics: dict[str, float]  # as logged, "eval/..." names
    classifier_run: str | None  # None with Inception features
    reference: str  # the reference-features cache file


@through_ray_client
def evaluate(run_id: str, options: EvaluateOptions | None = None, *, checkpoint: int | str | None = None,
             address: str | None = None, progress: bool = True) -> EvaluationResult:
    """Sample ``options.n`` images from run ``run_id``'s generator, compute ``options.metrics`` against its
    training data, and log them into the run.

    ``run_id``: a run id, or a registered version's ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``
    URI, which names (and logs into) that version's source run.

    ``options`` (`EvaluateOptions`): ``features`` ``classifier`` (the project classifier, offline) or
    ``inception`` (InceptionV3 as the literature uses it, from the local ``inception_weights`` file);
    ``gpu``: one GPU per sampling/embedding actor (default: when the cluster has GPUs).
    ``address``: the Ray cluster to sample and embed on (default RAY_ADDRESS, else a local Ray);
    ``checkpoint``: evaluate the generator of the run's checkpoint at that step, or ``best`` (the one
    Ray Train ranked best by eval/fd, `train --eval-every`), instead of its logged model (metrics are
    logged at that step: a quality curve); ``progress``: show the samples drawn and the reference
    features embedded (`pipelines.cluster.progress`)."""
    options = (options or EvaluateOptions()).validate()
    n, metrics, features, seed = options.n, options.chosen_metrics, options.features, options.seed
    inception = features == "inception"
    client = tracking.client(needs=f"MLflow run {run_id!r}")
    run = tracking.get_run(client, run_id)
    run_id = run.info.run_id  # a models:/ URI names its version's source run: evaluate logs there
    if run.data.tags.get(run_tags.STAGE) != "train":
        raise UserError(f"MLflow run {run_id} is not a wganctl training run: give the id of one")
    data_dir = run.data.params["data_dir"]
    manifest = _training_manifest(run, data_dir, labels_needed=not inception)
    tags = {"eval.features": features, "eval.n": str(n), "eval.seed": str(seed), "eval.metrics": ",".join(metrics)}
    if inception:
        extractor = inception_extractor(options.inception_weights)
        key = f"inception-{file_sha256(pafs.LocalFileSystem(), options.inception_weights)[:16]}"
        tags["eval.inception_weights"] = Path(options.inception_weights).name
    else:
        classifier_run = options.classifier or find_classifier(client, manifest)
        extractor = classifier_extractor(matching_classifier(client, classifier_run, manifest, f"run {run_id}"))
        key = f"classifier-{classifier_run}"
        tags["eval.classifier_run"] = classifier_run
    saved = None if checkpoint is None else checkpoints.of_run(run, checkpoint)
    gpu = _use_gpu(options.gpu, local=init_ray(address))
    reference, cache = reference_features(data_dir, extractor, key, manifest, gpu=gpu, progress=progress)

    if checkpoint is None:
        # the sampler reads the class count from the model; the per-class metrics' K is checked against it
        generator = logged_generator(f"runs:/{run_id}/{tracking.MODEL_NAME}", tracking.tracking_uri(),
                                     num_classes=int(run.data.params.get("num_classes", 0) or 0))
        step = int(run.data.tags.get(run_tags.COMPLETED_STEPS, "0"))
    else:
        step, payload = saved
        generator = checkpoint_generator(payload)
        tags["eval.checkpoint_step"] = str(step)
    drawn = sample_and_embed(generator, n, seed, extractor, gpu=gpu, progress=progress)
    images, sample_features, sample_logits = drawn["image"], drawn["features"], drawn["logits"]
    results = distances(drawn, reference, metrics, seed, prefix="eval/inception/" if inception else "eval/")
    coverage = None if inception else class_coverage(sample_logits.argmax(1), len(manifest["class_names"]))
    num_classes = int(run.data.params.get("num_classes", 0) or 0)
    if num_classes and not inception:
        # A conditional run: sample i was drawn for class i % K (pipelines.cluster.batch_inference).
        per_class = _per_class(drawn["row"] % num_classes, sample_logits.argmax(1), sample_features,
                               reference, dataset_labels(data_dir, manifest), manifest["class_names"])
        results["eval/class_accuracy"] = float(np.mean([row["accuracy"] for row in per_class]))
        results["eval/intra_fid_mean"] = float(np.mean([row["intra_fid"] for row in per_class]))
        tracking.log_csv(client, run_id, per_class, "eval/per_class.csv")
    if "coverage" in metrics:
        results["eval/coverage_classes"] = float(coverage.covered)
        results["eval/coverage_min_share"] = float(coverage.shares.min())

    _log_evaluation(client, run_id, results, step, tags=tags)
    # the reference it read; a run that trained on it already has it (MLflow keeps the first context)
    tracking.log_dataset(client, run_id, data_dir, manifest, run.data.tags[run_tags.DATA_MANIFEST_SHA256],
                         context="evaluation")
    _log_pictures(client, run_id, images, sample_features, reference.features, data_dir, manifest, coverage)
    return EvaluationResult(run_id=run_id, metrics=results, classifier_run=tags.get("eval.classifier_run"),
                            reference=cache)


def _use_gpu(gpu: bool | None, local: bool) -> bool:
    """--gpu/--cpu as given (a GPU refused here when the cluster has none), else a GPU where the cluster has one."""
    if gpu is None:
        import ray

        return ray.cluster_resources().get("GPU", 0) > 0
    if gpu:
        check_placeable({"GPU": 1}, 1, local=local)
    return gpu


def distances(drawn: dict[str, np.ndarray], reference: Reference, metrics: tuple[str, ...], seed: int,
              prefix: str = "eval/") -> dict[str, float]:
    """The distribution metrics of samples (``drawn``: their features and logits) to the reference
    features: FID (Heusel et al. 2017), KID (Binkowski et al. 2018), precision/recall (Kynkaanniemi et
    al. 2019) and IS (Salimans et al. 2016), those named in ``metrics``, keyed as logged."""
    sample_features, sample_logits, n = drawn["features"], drawn["logits"], len(drawn["features"])
    results = {}
    if "fid" in metrics:
        results[prefix + "fid"] = frechet_distance_from_statistics(*feature_statistics(sample_features),
                                                                   reference.mu, reference.sigma)
    if "kid" in metrics:
        results[prefix + "kid_mean"], results[prefix + "kid_std"] = kernel_inception_distance(
            sample_features, reference.features, seed=seed)
    if "pr" in metrics:
        # equally sized sets, as Kynkäänniemi et al. 2019 compare them
        subset = np.random.default_rng(seed).choice(len(reference.features), min(n, len(reference.features)),
                                                    replace=False)
        results[prefix + "precision"], results[prefix + "recall"] = precision_recall(
            sample_features, reference.features[subset])
    if "is" in metrics:
        probabilities = torch.from_numpy(sample_logits).double().softmax(1).numpy()
        results[prefix + "is_mean"], results[prefix + "is_std"] = inception_score(probabilities)
    return results


def _per_class(intended: np.ndarray, predicted: np.ndarray, features: np.ndarray, reference: Reference,
               reference_labels: np.ndarray, class_names: list[str]) -> list[dict]:
    """Per class of a conditional run: how often the classifier sees the intended class in its
    samples, and the intra-class Frechet distance (samples of class k against real class-k rows)."""
    rows = []
    for k, name in enumerate(class_names):
        mine, real = features[intended == k], reference.features[reference_labels == k]
        intra = (frechet_distance_from_statistics(*feature_statistics(mine), *feature_statistics(real))
                 if len(mine) > 1 and len(real) > 1 else float("nan"))
        rows.append({"class": k, "name": name, "samples": int(len(mine)),
                     "accuracy": float(np.mean(predicted[intended == k] == k)) if len(mine) else float("nan"),
                     "intra_fid": intra})
    return rows


def _training_manifest(run, data_dir: str, labels_needed: bool = True) -> dict:
    """The manifest of the data the run trained on; refused if the directory now holds other data."""
    manifest = load_manifest(data_dir, verify=False)
    if manifest_sha256(data_dir) != run.data.tags.get(run_tags.DATA_MANIFEST_SHA256):
        raise UserError(f"{data_dir} no longer holds the data run {run.info.run_id} trained on (manifest sha256 differs): "
                        f"prepare that data again at {data_dir} to evaluate against it")
    if labels_needed and not manifest["class_names"]:
        raise UserError(f"{data_dir} has no class labels: classifier features need a labelled dataset")
    return manifest


def draw_samples(run_id: str, n: int, seed: int) -> np.ndarray:
    """(n, H, W, C) uint8 samples of the run's logged generator, in this process: the same
    images `evaluate` measures with ``seed`` (row i's latent comes from (seed, i), and from a
    conditional run its label is i % K, as `pipelines.cluster.batch_inference.draw_rows` draws them)."""
    model, z_dim = tracking.load_generator(run_id)
    draw = model_sampler(model)
    rows = np.arange(n)
    z = latents(seed, rows, z_dim)
    return np.concatenate([draw(z[start:start + FEATURE_BATCH], rows[start:start + FEATURE_BATCH])
                           for start in range(0, n, FEATURE_BATCH)])


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
    if coverage is not None:
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


def compare(run_ids: list[str], out: str | Path | None = None,
            checkpoint: str | int | None = None) -> tuple[str, Path | None]:
    """A text table of the runs' latest eval metrics and, with ``out``, their eval grids side by side in one PNG.
    Each of ``run_ids`` is a run id or a ``models:/`` URI (its version's source run). ``checkpoint``: each
    run's eval metrics at that step, or at its ``best`` (`train --eval-every`), not its latest."""
    if not run_ids:
        raise UserError("give at least one run id")
    if out is not None and Path(out).suffix != ".png":
        raise UserError(f"unsupported output {Path(out).name}: use a .png file")
    client = tracking.client(needs=f"MLflow run {run_ids[0]!r}")
    runs = [tracking.get_run(client, run_id) for run_id in run_ids]
    for run in runs:
        if not any(key.startswith("eval/") for key in run.data.metrics):
            raise UserError(f"run {run.info.run_id} has no evaluation: run `wganctl evaluate {run.info.run_id}` first")
    keys = sorted({key for run in runs for key in run.data.metrics if key.startswith("eval/")})
    header = ["run", "name", "step"] + [key.removeprefix("eval/") for key in keys]
    lines = []
    for run in runs:
        step, values = _eval_metrics(client, run, keys, checkpoint)
        lines.append([run.info.run_id[:12], run.info.run_name or "", step]
                     + [f"{values[key]:.4g}" if key in values else "-" for key in keys])
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    table = "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [header, *lines])
    return table, (_side_by_side_grids(runs, Path(out)) if out is not None else None)


def _eval_metrics(client: MlflowClient, run, keys: list[str], checkpoint: str | int | None) -> tuple[str, dict]:
    """(the step shown, the run's eval metrics there): its latest, or those logged at ``checkpoint``'s step."""
    if checkpoint is None:
        return run.data.tags.get(run_tags.COMPLETED_STEPS, ""), run.data.metrics
    step = checkpoints.step_of(run, checkpoint)
    values = {m.key: m.value for key in keys if key in run.data.metrics
              for m in client.get_metric_history(run.info.run_id, key) if m.step == step}
    return str(step), values


def _side_by_side_grids(runs: list, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

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
