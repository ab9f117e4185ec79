"""`wganctl experiment augment`: does a conditional GAN's data make a classifier better?

The question one seed report asked: train the project classifier on (a) N real images
per class (arm ``real``), (b) the same plus synthetic images of every class from a
conditional WGAN-GP run (arm ``with-wgan-gp``), (c) the same plus synthetic images from
a conditional standard-GAN run (``with-gan``; any number of runs: one arm each, named by the run's loss, and by its loss
and the run id's first 8 characters where runs share a loss), over several seeds, and compare real-test
accuracy. Each run also gets a synthetic-only arm (``only-<loss>``): its accuracy is the
classification accuracy score (CAS, Ravuri and Vinyals 2019), logged on the run as
``eval/classification_accuracy_score``. Every (arm, seed) training is a Ray task; the
experiment is one MLflow run with the table (`augment.csv`), per-arm mean and spread,
and a plot.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
import ray
import torch
from mlflow.tracking import MlflowClient

from wgan.classifier import Classifier, ClassifierSpec, fit
from wgan.data.manifest import load_manifest, manifest_sha256
from wgan.data.reader import pixels_to_tensor
from wgan.data.rows import dataset_labels, read_rows, split_manifest
from wgan.errors import UserError
from pipelines import tracking
from pipelines.tracking import run_tags
from pipelines.cluster.batch_inference import latents
from pipelines.cluster.connect import check_address, init_ray
from pipelines.stage_options import AugmentOptions

STAGE = "augment"
BATCH = 64
LR = 2e-3


@dataclass
class AugmentResult:
    run_id: str
    rows: list[dict]  # one per (arm, seed): arm, seed, train_images, accuracy
    summary: dict[str, tuple[float, float]]  # arm -> (mean, standard deviation) of accuracy



def arm_labels(losses: dict[str, str]) -> dict[str, str]:
    """Each generator run's arm label: its loss, or where runs share one, the loss and the
    run id's first 8 characters (two wgan-gp runs would otherwise be one arm, the second's)."""
    return {run_id: loss if list(losses.values()).count(loss) == 1 else f"{loss}-{run_id[:8]}"
            for run_id, loss in losses.items()}

def augment_experiment(data_dir: str, runs: list[str], options: AugmentOptions, *, experiment: str = "wganctl-augment",
                       address: str | None = None) -> AugmentResult:
    """Classifier accuracy on the real test split, trained on real data alone and on real plus each run's samples
    (``options``: `AugmentOptions`, how many real and synthetic images per class, how many trainings)."""
    options = options.validate()
    real_per_class, seeds, steps = options.real_per_class, options.seeds, options.steps
    synthetic_per_class = options.synthetic_per_class
    synthetic_per_class = synthetic_per_class or real_per_class
    tracking.check_experiment_name(experiment)
    repeated = sorted({run_id for run_id in runs if runs.count(run_id) > 1})
    if repeated:
        raise UserError(f"run {repeated[0]} is given twice: give each --runs once")
    check_address(address)
    manifest = load_manifest(data_dir, verify=True)
    classes = manifest["class_names"]
    if not classes or not {"train", "test"} <= set(manifest["splits"]):
        raise UserError(f"{data_dir} needs class labels and train and test splits: prepare it without --split")
    client = tracking.client(needs=f"MLflow run {runs[0]!r}" if runs else "")
    arms: dict[str, tuple[str | None, bool]] = {"real": (None, True)}  # arm -> (generator run, real images in)
    losses = {}
    for run_id in runs:
        run = tracking.get_run(client, run_id)
        if int(run.data.params.get("num_classes", 0) or 0) != len(classes):
            raise UserError(f"run {run_id} is not a class-conditional run on {len(classes)} classes: "
                            f"train one with `wganctl train --conditional` on this dataset")
        if run.data.tags.get(run_tags.DATA_DATASET) != manifest.get("dataset") or int(run.data.params["image_size"]) != manifest["size"]:
            raise UserError(f"run {run_id} was trained on other data ({run.data.tags.get(run_tags.DATA_DATASET)}, "
                            f"{run.data.params['image_size']} px): give runs trained on {manifest.get('dataset')} "
                            f"at {manifest['size']} px")
        losses[run_id] = run.data.params["loss"]
    for run_id, label in arm_labels(losses).items():
        arms[f"with-{label}"] = (run_id, True)  # real images plus this run's samples
        arms[f"only-{label}"] = (run_id, False)  # its samples alone: the CAS
    train_split = split_manifest(data_dir, manifest, "train")
    train_labels = dataset_labels(data_dir, train_split)
    too_few = [classes[k] for k in range(len(classes)) if np.sum(train_labels == k) < real_per_class]
    if too_few:
        raise UserError(f"--real-per-class {real_per_class} is more than the train split holds of {', '.join(too_few)}")
    test_split = split_manifest(data_dir, manifest, "test")
    test_images = read_rows(data_dir, test_split, np.arange(test_split["count"]))
    test_labels = dataset_labels(data_dir, test_split)

    init_ray(address)
    spec = ClassifierSpec(channels=manifest["channels"], image_size=manifest["size"], num_classes=len(classes))
    test_ref = ray.put((test_images, test_labels))
    pending = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        chosen = np.concatenate([rng.choice(np.flatnonzero(train_labels == k), real_per_class, replace=False)
                                 for k in range(len(classes))])
        real = (read_rows(data_dir, train_split, np.sort(chosen)), train_labels[np.sort(chosen)])
        synthetic = {run_id: _synthetic(run_id, synthetic_per_class, len(classes), seed) for run_id in runs}
        for arm, (run_id, with_real) in arms.items():
            parts = ([real] if with_real else []) + ([synthetic[run_id]] if run_id else [])
            images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            ref = _train_and_test.remote(spec.to_dict(), images, labels, test_ref, steps, seed)
            pending[ref] = {"arm": arm, "seed": seed, "train_images": int(len(labels))}
    rows = []
    for ref, row in pending.items():
        rows.append({**row, "accuracy": ray.get(ref)})
    summary = {arm: (statistics.mean(r["accuracy"] for r in rows if r["arm"] == arm),
                     statistics.stdev([r["accuracy"] for r in rows if r["arm"] == arm]) if seeds > 1 else 0.0)
               for arm in arms}
    run_id = _log(client, experiment, data_dir, manifest, dict(real_per_class=real_per_class,
                  synthetic_per_class=synthetic_per_class, seeds=seeds, steps=steps, batch=BATCH, lr=LR,
                  runs=",".join(runs)), arms, rows, summary)
    for arm, (source, with_real) in arms.items():
        if source and not with_real:
            client.log_metric(source, "eval/classification_accuracy_score", summary[arm][0])
    return AugmentResult(run_id, rows, summary)


def _synthetic(run_id: str, per_class: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` samples of every class from the run's logged (conditional) generator."""
    model, z_dim = tracking.load_generator(run_id)
    images, labels = [], []
    for k in range(num_classes):
        z = latents(1000 + seed * num_classes + k, np.arange(per_class), z_dim)
        images.append(np.asarray(model.predict(z, params={"label": k}), dtype=np.uint8))
        labels.append(np.full(per_class, k))
    return np.concatenate(images), np.concatenate(labels)


@ray.remote(num_cpus=1, max_retries=0)
def _train_and_test(spec: dict, images: np.ndarray, labels: np.ndarray, test: tuple, steps: int, seed: int) -> float:
    """One classifier on (images, labels) for ``steps`` Adam steps, then its accuracy on the real test set."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = Classifier(ClassifierSpec(**spec))
    x, y = pixels_to_tensor(images), torch.from_numpy(labels.astype(np.int64))
    steps_per_epoch = -(-len(y) // BATCH)
    generator = torch.Generator().manual_seed(seed)

    def epoch_batches(epoch: int):
        order = torch.randperm(len(y), generator=generator)
        return ((x[order[i:i + BATCH]], y[order[i:i + BATCH]]) for i in range(0, len(y), BATCH))

    fit(model, epoch_batches, steps_per_epoch, max(1, -(-steps // steps_per_epoch)), LR)
    test_images, test_labels = test
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(pixels_to_tensor(test_images[i:i + 1000])).argmax(1)
                               for i in range(0, len(test_labels), 1000)]).numpy()
    return float(np.mean(predicted == test_labels))


def _log(client: MlflowClient, experiment: str, data_dir: str, manifest: dict, params: dict, arms: dict,
         rows: list[dict], summary: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sha256 = manifest_sha256(data_dir)
    run = client.create_run(tracking.experiment_id(client, experiment), tags={
        run_tags.STAGE: STAGE, run_tags.DATA_MANIFEST_SHA256: sha256, run_tags.DATA_DATASET: str(manifest.get("dataset")),
        run_tags.CODE_VERSION: tracking.code_version(), run_tags.RUN_NAME: f"augment-{params['real_per_class']}-per-class"})
    run_id = run.info.run_id
    tracking.log_dataset(client, run_id, data_dir, manifest, sha256, context="training")
    for key, value in {**params, "data_dir": data_dir}.items():
        client.log_param(run_id, key, value)
    for arm, (source, _) in arms.items():
        if source:
            client.set_tag(run_id, f"arm.{arm}", source)
        mean, spread = summary[arm]
        client.log_metric(run_id, f"accuracy/{arm}/mean", mean)
        client.log_metric(run_id, f"accuracy/{arm}/std", spread)
    tracking.log_csv(client, run_id, sorted(rows, key=lambda r: (r["arm"], r["seed"])), "augment.csv",
                     fieldnames=["arm", "seed", "train_images", "accuracy"])
    fig, ax = plt.subplots(figsize=(1.8 * len(arms) + 1, 3.2))
    names = list(arms)
    ax.bar(range(len(names)), [summary[a][0] for a in names], yerr=[summary[a][1] for a in names], capsize=4)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("real test accuracy")
    low = min(r["accuracy"] for r in rows)
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(r["accuracy"] for r in rows) + 0.02))
    ax.set_title(f"{params['real_per_class']} real images per class, {params['seeds']} seeds")
    fig.tight_layout()
    client.log_figure(run_id, fig, "augment.png")
    plt.close(fig)
    client.set_terminated(run_id, status="FINISHED")
    return run_id
