"""Sample quality per CPU-second: training configurations at an equal budget, scored alike.

Run from the repository root:

    .venv/bin/python benchmarks/bench_quality.py --data data/fashion-mnist-28px --classifier RUN_ID \\
        [--budget 600] [--snapshots 300] [--configs paper,main] [--clock cpu|wall] [--threads 1]

The budget is in CPU-seconds of one core by default (``--clock cpu``: this process's CPU
time, `time.process_time`, with torch on one thread), which stays the same when other
programs share the machine; ``--clock wall`` measures wall-clock seconds instead, for a quiet
machine (and ``--threads`` more torch threads). Each contender trains in this process (the
training step of `wgan.step`, its lr schedule included, data from the prepared train split
through `wgan.data.reader.ShardReader`) until its budget is spent (a ``lr_decay: linear``
contender also stops at its ``steps``, where its lr reaches 0), then draws 10,000 samples
(from the moving average of the generator when the config keeps one) and is scored in the
project classifier's features (the evaluate stage's): Frechet distance to the whole train
split, and class coverage (classes that get at least half their fair share of samples).
``--snapshots`` scores each contender at earlier budgets too (the clock stops while it
scores), for its FD-vs-budget trend. Contenders:

* ``paper``: Gulrajani et al. 2017's WGAN-GP at their settings on the DCGAN networks
  (width 64, Adam 1e-4 (0, 0.9), lambda 10, n_critic 5, batch 64), fp32, no EMA;
* ``main``: the main job's configuration (`pipelines.quickstart.MAIN_JOB`);
* ``dcgan``, ``dcgan-sn``, ``resnet``, ``resnet-sn`` (the "Beyond DCGAN" arms, `ARMS`): the DCGAN
  networks at width 32 and the WGAN-GP paper's ResNet at width 32, both WGAN-GP with n_critic 2,
  lr 4e-4, batch 64, with the layer-norm critic or (``-sn``) a spectrally normalised one;
* ``base``: the main job's settings before issue 19 (`BASE`: WGAN-GP, n_critic 2, lr 4e-4,
  width 32, batch 64);
* any ``name=key:value;key:value`` for exploring: TrainConfig fields over `BASE` (a tuple's
  values separated by spaces: ``betas:0.5 0.999``), so that the commands in
  RESULTS-issue19.md keep their meaning when the main job changes.

Prints one row per contender (and snapshot) and the Frechet distance ratio of each to the
first contender at the same budget.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from wgan.step import TrainStep, build_optimizers, build_schedulers  # noqa: E402

SAMPLES = 10_000
PAPER = TrainConfig(loss="wgan-gp", width=64, batch=64)
# Width 32 for both: the DCGAN width the main job measured best on a CPU, and a quarter of the
# ResNet paper's 128, whose step already costs ~6x DCGAN-32's at 32 px (1.06 vs 0.18 CPU-s of
# one core, bf16; width 64: 2.5 CPU-s). n_critic 2 and lr 4e-4: the main job's measured settings.
_ARM = TrainConfig(loss="wgan-gp", width=32, batch=64, n_critic=2, lr=4e-4)
ARMS = {"dcgan": _ARM, "dcgan-sn": dataclasses.replace(_ARM, critic_norm="spectral"),
        "resnet": dataclasses.replace(_ARM, arch="resnet"),
        "resnet-sn": dataclasses.replace(_ARM, arch="resnet", critic_norm="spectral")}


# The main job's settings before issue 19 chose new ones: the base of every override contender.
BASE = TrainConfig(loss="wgan-gp", arch="dcgan", width=32, steps=4500, batch=64, n_critic=2, lr=4e-4)


def parse_contender(text: str) -> tuple[str, TrainConfig]:
    if text == "paper":
        return text, PAPER
    if text == "main":
        return text, MAIN_JOB
    if text == "base":
        return text, BASE
    if text in ARMS:
        return text, ARMS[text]
    name, _, overrides = text.partition("=")
    values = {}
    for item in filter(None, overrides.split(";")):
        key, _, value = item.partition(":")
        field = {f.name: f for f in dataclasses.fields(TrainConfig)}[key]
        kind = str(field.type)
        if "tuple" in kind:  # betas:0.5 0.999
            values[key] = tuple(float(v) for v in value.split())
        else:
            values[key] = value if "str" in kind else (float(value) if "float" in kind else int(value))
    return name, dataclasses.replace(BASE, **values)


def endless(reader):
    while True:
        yield from reader


def train_for(cfg: TrainConfig, data: str, manifest: dict, budgets: list[float], clock, precision_mode: str = "auto"):
    """Yield (budget, generator, steps) at each budget (ascending) of training seconds on ``clock``;
    the clock is paused while the caller scores."""
    cfg = dataclasses.replace(cfg, image_size=manifest["size"], channels=manifest["channels"]).resolved()
    torch.manual_seed(cfg.seed)
    generator, critic = build_generator(cfg), build_critic(cfg)
    optimizers = build_optimizers(cfg, generator, critic)
    step = TrainStep(cfg, generator, critic, *optimizers, precision_mode=precision_mode,
                     schedulers=build_schedulers(cfg, *optimizers))
    ema = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(cfg.g_ema), use_buffers=True) if cfg.g_ema else None
    batches = endless(split_reader(data, manifest, "train", cfg.batch, shuffle=True, seed=cfg.seed))
    steps, spent = 0, 0.0
    for budget in budgets:
        start = clock()
        while spent + clock() - start < budget and not (cfg.lr_decay == "linear" and steps >= cfg.steps):
            step(next(batches) for _ in range(cfg.n_critic))
            if ema is not None:
                ema.update_parameters(generator)
            steps += 1
        spent += clock() - start
        model = ema.module if ema is not None else generator
        yield budget, model.eval(), steps
        model.train()


@torch.no_grad()
def samples(generator: torch.nn.Module, z_dim: int) -> torch.Tensor:
    z = torch.randn(SAMPLES, z_dim, generator=torch.Generator().manual_seed(1234))
    out = torch.cat([generator(z[i:i + 1000], None) for i in range(0, SAMPLES, 1000)])
    return ((out + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1  # quantised like the data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a prepared, labelled dataset with a train split")
    parser.add_argument("--classifier", required=True, help="MLflow run id of `wganctl train-classifier` on it")
    parser.add_argument("--budget", type=float, default=600, help="training seconds per contender (see --clock)")
    parser.add_argument("--snapshots", default="", help="comma-separated earlier budgets to score each contender at too")
    parser.add_argument("--configs", default="paper,main", help="comma-separated contenders (see above)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: this process's CPU-seconds (robust to a shared machine); wall: wall-clock seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the budget is one core's CPU time)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    budgets = sorted({float(b) for b in filter(None, args.snapshots.split(","))} | {args.budget})
    manifest = load_manifest(args.data)
    classifier = load_classifier(args.classifier)
    reference, _ = features_and_logits(classifier, (x for x, _ in split_reader(args.data, manifest, "train", 1000,
                                                                               shuffle=False)))
    mu, sigma = feature_statistics(reference)
    classes = len(manifest["class_names"])
    unit = "CPU-seconds of one core (process time)" if args.clock == "cpu" else "wall-clock seconds"
    print(f"budgets {', '.join(f'{b:.0f}' for b in budgets)} {unit} per contender, {SAMPLES} samples, "
          f"torch threads {torch.get_num_threads()}, {manifest['size']} px")
    print(f"{'contender':<12} {'budget':>6} {'steps':>6} {'FD':>8} {'/ first':>8} {'classes':>8} {'min share':>9}  config")
    first: dict[float, float] = {}
    for text in args.configs.split(","):
        name, cfg = parse_contender(text)
        cfg = dataclasses.replace(cfg, image_size=manifest["size"], channels=manifest["channels"]).resolved()
        for budget, generator, steps in train_for(cfg, args.data, manifest, budgets, clock,
                                                  "fp32" if name == "paper" else "auto"):
            features, logits = features_and_logits(classifier, [samples(generator, cfg.z_dim)])
            fd = frechet_distance_from_statistics(*feature_statistics(features), mu, sigma)
            coverage = class_coverage(logits.argmax(1), classes)
            ratio = f"{fd / first[budget]:.2f}x" if budget in first else "-"
            first.setdefault(budget, fd)
            print(f"{name:<12} {budget:>6.0f} {steps:>6} {fd:>8.3f} {ratio:>8} {coverage.covered:>5}/{classes} "
                  f"{coverage.shares.min():>9.3f}  {cfg.loss} {cfg.arch} width {cfg.width} critic_norm {cfg.critic_norm} "
                  f"batch {cfg.batch} lr {cfg.lr} betas {cfg.betas} lr_decay {cfg.lr_decay} n_critic {cfg.n_critic} g_ema {cfg.g_ema}",
                  flush=True)


if __name__ == "__main__":
    main()
