"""Sample quality per CPU-minute: training configurations at an equal wall-clock budget, scored alike.

Run from the repository root, with nothing else running (the budget is wall-clock):

    .venv/bin/python benchmarks/bench_quality.py --data data/fashion-mnist-28px --classifier RUN_ID \\
        [--budget 600] [--configs paper,main]

Each contender trains in this process (the training step of `wgan.step`, data from the
prepared train split through `wgan.data.reader.ShardReader`, torch threads = CPU count)
until its budget is spent, then draws 10,000 samples (from the moving average of the
generator when the config keeps one) and is scored in the project classifier's features
(the evaluate stage's): Frechet distance to the whole train split, and class coverage
(classes that get at least half their fair share of samples). Contenders:

* ``paper``: Gulrajani et al. 2017's WGAN-GP at their settings on the DCGAN networks
  (width 64, Adam 1e-4 (0, 0.9), lambda 10, n_critic 5, batch 64), fp32, no EMA;
* ``main``: the main job's configuration (`pipelines.quickstart.MAIN_JOB`);
* any ``name=key:value;key:value`` for exploring (TrainConfig fields).

Prints one row per contender and the Frechet distance ratio of each to ``paper``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.classifier import features_and_logits, load_classifier, split_reader  # noqa: E402
from pipelines.quickstart import MAIN_JOB  # noqa: E402
from wgan.config import TrainConfig  # noqa: E402
from wgan.data.manifest import load_manifest  # noqa: E402
from wgan.metrics import class_coverage, feature_statistics, frechet_distance_from_statistics  # noqa: E402
from wgan.networks import build_critic, build_generator  # noqa: E402
from wgan.step import TrainStep, build_optimizers  # noqa: E402

SAMPLES = 10_000
PAPER = TrainConfig(loss="wgan-gp", width=64, batch=64)


def parse_contender(text: str) -> tuple[str, TrainConfig]:
    if text == "paper":
        return text, PAPER
    if text == "main":
        return text, MAIN_JOB
    name, _, overrides = text.partition("=")
    values = {}
    for item in filter(None, overrides.split(";")):
        key, _, value = item.partition(":")
        field = {f.name: f for f in dataclasses.fields(TrainConfig)}[key]
        values[key] = value if "str" in str(field.type) else (float(value) if "float" in str(field.type) else int(value))
    return name, dataclasses.replace(MAIN_JOB, **values)


def endless(reader):
    while True:
        yield from reader


def train_for(cfg: TrainConfig, data: str, manifest: dict, budget_s: float,
              precision_mode: str = "auto") -> tuple[torch.nn.Module, int]:
    cfg = dataclasses.replace(cfg, image_size=manifest["size"], channels=manifest["channels"]).resolved()
    torch.manual_seed(cfg.seed)
    generator, critic = build_generator(cfg), build_critic(cfg)
    step = TrainStep(cfg, generator, critic, *build_optimizers(cfg, generator, critic), precision_mode=precision_mode)
    ema = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(cfg.g_ema), use_buffers=True) if cfg.g_ema else None
    batches = endless(split_reader(data, manifest, "train", cfg.batch, shuffle=True, seed=cfg.seed))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        step(next(batches) for _ in range(cfg.n_critic))
        if ema is not None:
            ema.update_parameters(generator)
        steps += 1
    return (ema.module if ema is not None else generator).eval(), steps


@torch.no_grad()
def samples(generator: torch.nn.Module, z_dim: int) -> torch.Tensor:
    z = torch.randn(SAMPLES, z_dim, generator=torch.Generator().manual_seed(1234))
    out = torch.cat([generator(z[i:i + 1000], None) for i in range(0, SAMPLES, 1000)])
    return ((out + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1  # quantised like the data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a prepared, labelled dataset with a train split")
    parser.add_argument("--classifier", required=True, help="MLflow run id of `wganctl train-classifier` on it")
    parser.add_argument("--budget", type=float, default=600, help="training seconds per contender")
    parser.add_argument("--configs", default="paper,main", help="comma-separated contenders (see above)")
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    manifest = load_manifest(args.data)
    classifier = load_classifier(args.classifier)
    reference, _ = features_and_logits(classifier, (x for x, _ in split_reader(args.data, manifest, "train", 1000,
                                                                               shuffle=False)))
    mu, sigma = feature_statistics(reference)
    classes = len(manifest["class_names"])
    print(f"budget {args.budget:.0f} s per contender, {SAMPLES} samples, torch threads {torch.get_num_threads()}")
    print(f"{'contender':<12} {'steps':>6} {'FD':>8} {'/ paper':>8} {'classes':>8} {'min share':>9}  config")
    rows = {}
    for text in args.configs.split(","):
        name, cfg = parse_contender(text)
        generator, steps = train_for(cfg, args.data, manifest, args.budget, "fp32" if name == "paper" else "auto")
        features, logits = features_and_logits(classifier, [samples(generator, cfg.z_dim)])
        fd = frechet_distance_from_statistics(*feature_statistics(features), mu, sigma)
        coverage = class_coverage(logits.argmax(1), classes)
        rows[name] = fd
        ratio = f"{fd / rows['paper']:.2f}x" if "paper" in rows else "-"
        print(f"{name:<12} {steps:>6} {fd:>8.3f} {ratio:>8} {coverage.covered:>5}/{classes} {coverage.shares.min():>9.3f}  "
              f"width {cfg.width} batch {cfg.batch} lr {cfg.lr} n_critic {cfg.n_critic} g_ema {cfg.g_ema}", flush=True)


if __name__ == "__main__":
    main()
