"""Small data: conditional WGAN-GP on the augment experiment's real images, with and without DiffAugment.

Run from the repository root, with MLFLOW_TRACKING_URI set (the classifier's store):

    .venv/bin/python benchmarks/bench_small_data.py --data data/fashion-mnist-28px --classifier RUN_ID \\
        [--real-per-class 100] [--steps 1000] [--seeds 1] [--augment-steps 1500] [--augments none,diffaug]

1. Picks the real images `wganctl experiment augment --real-per-class N` gives its seed-0
   classifier (`pipelines.augment`: ``default_rng(0)``, N per class without replacement) and
   writes them as a prepared dataset of their own (``<data>-<N>-per-class``, train split only).
2. Trains a conditional WGAN-GP on it (`pipelines.train.train`; DCGAN width 32, n_critic 2,
   lr 4e-4, batch 64) for the same ``--steps``, with ``--augment none`` and ``--augment diffaug``,
   on two Ray Train workers of one torch thread each (DDP: a step equals one at batch 64; one
   worker would run two threads, which spin-wait on a shared 2-core machine).
3. Scores each run's logged generator: 10,000 samples (1,000 per class) in the project
   classifier's features, Frechet distance to the whole real test split, and how many samples the
   classifier gives the class they were drawn for.
4. Runs the augment experiment (`pipelines.augment.augment_experiment`) on the full dataset with
   each run in turn (both runs are wgan-gp, so one experiment per run keeps the arm names apart).
   With ``--seeds 1`` its classifier gets exactly the real images the generators saw; more seeds
   draw other real images too, which the generators did not see.

Training is by steps, not by a clock, so the figures do not depend on a shared machine's load.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import tracking  # noqa: E402
from pipelines.augment import augment_experiment  # noqa: E402
from pipelines.classifier import features_and_logits, load_classifier, split_reader  # noqa: E402
from pipelines.train import train  # noqa: E402
from wgan.config import RunSettings, TrainConfig  # noqa: E402
from wgan.data.images import pack_images  # noqa: E402
from wgan.data.manifest import load_manifest, write_manifest  # noqa: E402
from wgan.data.reader import pixels_to_tensor  # noqa: E402
from wgan.data.rows import dataset_labels, read_rows, split_manifest  # noqa: E402
from wgan.data.shards import write_shard  # noqa: E402
from wgan.metrics import feature_statistics, frechet_distance_from_statistics  # noqa: E402
from pipelines.stage_options import AugmentOptions  # noqa: E402

CONFIG = TrainConfig(loss="wgan-gp", width=32, batch=64, n_critic=2, lr=4e-4, conditional=True)
SAMPLES_PER_CLASS = 1000


def write_subset(data_dir: str, per_class: int) -> str:
    """The augment experiment's seed-0 real images as a prepared dataset (train split only)."""
    manifest = load_manifest(data_dir)
    train_split = split_manifest(data_dir, manifest, "train")
    labels = dataset_labels(data_dir, train_split)
    rng = np.random.default_rng(0)  # pipelines.augment's draw for its seed 0
    chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), per_class, replace=False)
                                     for k in range(len(manifest["class_names"]))]))
    images = read_rows(data_dir, train_split, chosen)
    out = f"{data_dir.rstrip('/')}-{per_class}-per-class"
    Path(out).mkdir(exist_ok=True)
    table = pa.table({"image": pack_images(images), "label": labels[chosen], "split": ["train"] * len(chosen)})
    shard = write_shard(pafs.LocalFileSystem(), out, 0, table, manifest["size"], manifest["channels"])
    scaled = images.astype(np.float64) / 255
    write_manifest(pafs.LocalFileSystem(), out, {
        **manifest, "splits": ["train"], "count": len(chosen), "mean": scaled.mean(axis=(0, 1, 2)).tolist(),
        "std": scaled.std(axis=(0, 1, 2)).tolist(),
        "shards": [{"path": shard.path, "rows": shard.rows, "sha256": shard.sha256}],
        "params": {**manifest["params"], "subset": f"pipelines.augment seed 0, {per_class} per class"}})
    return out


def score(run_id: str, classifier, mu, sigma, classes: int) -> tuple[float, float]:
    """(FD to the real test split, share of samples classified as the class they were drawn for)."""
    model, z_dim = tracking.load_generator(run_id)
    z = np.random.default_rng(1234).standard_normal((SAMPLES_PER_CLASS, z_dim)).astype("float32")
    images = [pixels_to_tensor(np.asarray(model.predict(z, params={"label": k}), dtype=np.uint8))
              for k in range(classes)]
    features, logits = features_and_logits(classifier, images)
    drawn = np.repeat(np.arange(classes), SAMPLES_PER_CLASS)
    return (frechet_distance_from_statistics(*feature_statistics(features), mu, sigma),
            float(np.mean(logits.argmax(1) == drawn)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a prepared, labelled dataset with train and test splits")
    parser.add_argument("--classifier", required=True, help="MLflow run id of `wganctl train-classifier` on it")
    parser.add_argument("--real-per-class", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1000, help="generator steps of each GAN")
    parser.add_argument("--seeds", type=int, default=1, help="the augment experiment's --seeds")
    parser.add_argument("--augment-steps", type=int, default=1500, help="the augment experiment's classifier --steps")
    parser.add_argument("--augments", default="none,diffaug", help="comma-separated --augment values to train")
    args = parser.parse_args()

    torch.set_num_threads(1)
    subset = write_subset(args.data, args.real_per_class)
    manifest = load_manifest(args.data)
    classes = len(manifest["class_names"])
    classifier = load_classifier(args.classifier)
    reference, _ = features_and_logits(classifier, (x for x, _ in split_reader(args.data, manifest, "test", 1000,
                                                                               shuffle=False)))
    mu, sigma = feature_statistics(reference)
    rows = []
    for augment in args.augments.split(","):
        cfg = dataclasses.replace(CONFIG, steps=args.steps, augment=augment)
        run = RunSettings(workers=2, log_every=50, sample_every=args.steps, checkpoint_every=args.steps)
        result = train(cfg, subset, run=run, experiment="bench-small-data", progress=False)
        fd, agreement = score(result.run_id, classifier, mu, sigma, classes)
        experiment = augment_experiment(args.data, options=AugmentOptions(real_per_class=args.real_per_class, seeds=args.seeds, steps=args.augment_steps), runs=[result.run_id], experiment="bench-small-data")
        rows.append((augment, result.run_id, fd, agreement, experiment))
        print(f"augment {augment}: run {result.run_id} FD {fd:.3f}, experiment run {experiment.run_id}", flush=True)

    print(f"\n{args.real_per_class} real images per class ({subset}), {args.steps} generator steps each; "
          f"FD to the {manifest['size']} px test split in the project classifier's features, 10,000 samples; "
          f"augment experiment: {args.seeds} seed(s), {args.augment_steps} classifier steps, real test accuracy")
    print(f"{'--augment':<9} {'FD':>8} {'/ none':>7} {'class ok':>8} {'real':>13} {'real+synth':>13} {'synth only':>13}  run")
    for augment, run_id, fd, agreement, experiment in rows:
        cells = [f"{m:.4f}+-{s:.4f}" for m, s in (experiment.summary[arm] for arm in
                                                  ("real", "with-wgan-gp", "only-wgan-gp"))]
        print(f"{augment:<9} {fd:>8.3f} {fd / rows[0][2]:>6.2f}x {agreement:>8.3f} {cells[0]:>13} {cells[1]:>13} "
              f"{cells[2]:>13}  {run_id}")


if __name__ == "__main__":
    main()
