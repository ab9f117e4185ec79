"""Training throughput: our WGAN-GP step against a plain PyTorch loop, and through Ray Train + MLflow.

Run from the repository root (offline is fine):

    .venv/bin/python benchmarks/bench_train.py [--quick] [--sizes 28,32,64] [--steps N] [--width 64]

images/s = real images consumed by the critic per second = n_critic * batch * steps / seconds,
with the WGAN-GP paper defaults (batch 64, n_critic 5, Adam 1e-4 (0, 0.9), lambda 10,
critic layer norm) and the DCGAN networks of `wgan.networks`.

1. step: `wgan.step.TrainStep` ("ours") against `plain_step` below, the textbook loop of
   Gulrajani et al. 2017, Algorithm 1 (separate D(real), D(fake), D(x_hat) forwards, the
   penalty through autograd.grad, one backward, an optimiser step), on the same
   architecture with the same initial weights, batch and n_critic, at 28 px (1 channel),
   32 and 64 px (3 channels). Real batches are random tensors made once (no data loading).
   Every contender is warmed up with one step, then timed for --steps generator steps
   per round; the contenders take turns, in a rotated order each round, and the table
   gives each one's median over the rounds and the medians of its per-round ratios to the
   plain loop and to our step (timed back to back, so slow load drifts cancel).
   Speed-up variants of our step, timed alongside:
   * channels_last: networks and batches in channels-last memory format;
   * compiled generator: torch.compile of the generator. The critic cannot be compiled:
     aot_autograd does not support the double backward that the penalty needs;
   * bf16 autocast: only where the CPU has bf16 instructions (avx512_bf16 / amx_bf16);
     oneDNN emulates bf16 elsewhere, about 10x slower than float32.
2. Ray Train: `pipelines.train.train` with one worker, MLflow on (a temporary sqlite store),
   on Fashion-MNIST 28 px prepared into a temporary directory (or --data), with the default
   logging interval (shortened for runs too short to hold 8 intervals). Its rate is the median
   of the run's logged `throughput/images_per_s` values without the first interval (start-up).
   The plain loop and our step are timed at the same settings and torch thread count in
   this process, alternating, before and after the run. Ray's workers run at nice 0 here,
   not Ray's default 15, so that they compete for the CPU as this process does.
   Ray Train + MLflow / plain is the target; / ours is the pipeline's own overhead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wgan.config import TrainConfig  # noqa: E402
from wgan.networks import build_critic, build_generator  # noqa: E402
from wgan.precision import cpu_has_bf16  # noqa: E402
from wgan.step import TrainStep, build_optimizers  # noqa: E402

CHANNELS = {28: 1, 32: 3, 64: 3}
Step = Callable[[list[torch.Tensor]], None]  # one generator step on n_critic real batches


def config(size: int, width: int, **overrides) -> TrainConfig:
    overrides.setdefault("precision", "fp32")
    return TrainConfig(image_size=size, channels=CHANNELS[size], width=width, **overrides).resolved()


def networks(cfg: TrainConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)  # the same initial weights for every contender
    return build_generator(cfg), build_critic(cfg)


def plain_step(cfg: TrainConfig, generator: torch.nn.Module, critic: torch.nn.Module) -> Step:
    """Gulrajani et al. 2017, Algorithm 1, written as textbook PyTorch."""
    g_opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas)
    d_opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr, betas=cfg.betas)

    def step(reals: list[torch.Tensor]) -> None:
        n = reals[0].shape[0]
        for real in reals:
            with torch.no_grad():
                fake = generator(torch.randn(n, cfg.z_dim))
            eps = torch.rand(n, 1, 1, 1)
            x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
            (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
            penalty = ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
            loss = critic(fake).mean() - critic(real).mean() + cfg.lambda_gp * penalty
            d_opt.zero_grad()
            loss.backward()
            d_opt.step()
        critic.requires_grad_(False)
        g_loss = -critic(generator(torch.randn(n, cfg.z_dim))).mean()
        g_opt.zero_grad()
        g_loss.backward()
        g_opt.step()
        critic.requires_grad_(True)

    return step


def our_step(cfg: TrainConfig, generator: torch.nn.Module, critic: torch.nn.Module,
             channels_last: bool = False) -> Step:
    train_step = TrainStep(cfg, generator, critic, *build_optimizers(cfg, generator, critic))
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def step(reals: list[torch.Tensor]) -> None:
        train_step((real.contiguous(memory_format=layout), None) for real in reals)

    return step


def contenders(cfg: TrainConfig) -> dict[str, Step]:
    out = {"plain loop": plain_step(cfg, *networks(cfg)), "ours": our_step(cfg, *networks(cfg))}
    g, d = networks(cfg)
    out["ours + channels_last"] = our_step(cfg, g.to(memory_format=torch.channels_last),
                                           d.to(memory_format=torch.channels_last), channels_last=True)
    g, d = networks(cfg)
    out["ours + compiled G"] = our_step(cfg, torch.compile(g), d)
    if cpu_has_bf16():
        out["ours + bf16 autocast"] = our_step(dataclasses.replace(cfg, precision="bf16"), *networks(cfg))
    return out


def seconds(step: Step, reals: list[torch.Tensor], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step(reals)
    return time.perf_counter() - start


def measure(steps_by_name: dict[str, Step], reals: list[torch.Tensor], steps: int,
            rounds: int) -> dict[str, list[float]]:
    """images/s of each contender in each of ``rounds`` turns, order rotated each round, after a warm-up step."""
    images = len(reals) * reals[0].shape[0] * steps
    for step in steps_by_name.values():
        step(reals)  # warm-up (and compilation)
    names = list(steps_by_name)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(images / seconds(steps_by_name[name], reals, steps))
    return rates


def ratio(rates: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of ``name``'s rate over ``base``'s in the same round (cancels slow drifts)."""
    return statistics.median(a / b for a, b in zip(rates[name], rates[base]))


def real_batches(cfg: TrainConfig) -> list[torch.Tensor]:
    return [torch.rand(cfg.batch, cfg.channels, cfg.image_size, cfg.image_size) * 2 - 1
            for _ in range(cfg.n_critic)]


def bench_step(sizes: list[int], width: int, steps: int, rounds: int) -> None:
    print(f"\n== training step, width {width}, batch 64, n_critic 5: {rounds} rounds of {steps} steps, medians ==")
    if not cpu_has_bf16():
        print("(ours + bf16 autocast: skipped, this CPU has no bf16 instructions)")
    print(f"{'size':>8}  {'contender':<22} {'images/s':>9}  {'/ plain':>7}  {'/ ours':>6}")
    for size in sizes:
        cfg = config(size, width)
        start = time.perf_counter()
        rates = measure(contenders(cfg), real_batches(cfg), steps, rounds)
        for name, values in rates.items():
            print(f"{size:>3} px {cfg.channels}c  {name:<22} {statistics.median(values):>9.1f}  "
                  f"{ratio(rates, name, 'plain loop'):>6.2f}x  {ratio(rates, name, 'ours'):>5.2f}x")
        print(f"({size} px took {time.perf_counter() - start:.0f} s)", flush=True)


def bench_ray(data_dir: str | None, width: int, train_steps: int, steps: int, rounds: int, work: Path) -> None:
    from mlflow.tracking import MlflowClient

    from pipelines.prepare import prepare
    from pipelines.ray_cluster import init_ray, worker_resources
    from pipelines.train import train

    print(f"\n== Ray Train, 1 worker, MLflow logging on, 28 px, {train_steps} steps ==")
    os.chdir(work)  # the MLflow store, its artifacts and Ray's results stay in the temporary directory
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["RAY_worker_niceness"] = "0"  # Ray's default 15 starves the worker on a shared machine
    init_ray()
    if data_dir is None:
        data_dir = prepare("fashion-mnist", size=28, splits=["train"], out=str(work / "fm28"), progress=False).out
    # the default logging interval, shortened where the run is too short for 8 intervals
    cfg = config(28, width, steps=train_steps, log_every=min(TrainConfig.log_every, max(1, train_steps // 8)))
    torch.set_num_threads(worker_resources(1, False, local=True)[1])  # the worker's thread count
    loops = {"plain loop": plain_step(cfg, *networks(cfg)), "ours": our_step(cfg, *networks(cfg))}
    reals = real_batches(cfg)
    before = measure(loops, reals, steps, rounds)
    start = time.perf_counter()
    result = train(cfg, data_dir, experiment="bench-train", progress=False, storage_path=str(work / "ray_results"))
    seconds = time.perf_counter() - start
    after = measure(loops, reals, steps, rounds)

    history = sorted(MlflowClient().get_metric_history(result.run_id, "throughput/images_per_s"), key=lambda m: m.step)
    steady = [m.value for m in history[1:]]
    rate = statistics.median(steady)
    print(f"logged throughput/images_per_s by step: {', '.join(f'{m.step}: {m.value:.1f}' for m in history)}")
    print(f"Ray Train + MLflow: {rate:.1f} images/s (median of the {len(steady)} intervals after the first; "
          f"train() took {seconds:.0f} s in all)")
    for name in loops:
        loop = statistics.median(before[name] + after[name])
        print(f"{name + ':':<18} {loop:.1f} images/s (median of {len(before[name])} rounds before and after: "
              f"{statistics.median(before[name]):.1f}, {statistics.median(after[name]):.1f}); "
              f"Ray Train + MLflow / {name}: {rate / loop:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one step per round, a short Ray run (smoke test)")
    parser.add_argument("--sizes", default="28,32,64", help="image sizes of the step benchmark (28, 32, 64)")
    parser.add_argument("--steps", type=int, default=1, help="generator steps per timed round")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per contender (default 3, quick 1)")
    parser.add_argument("--width", type=int, default=64, help="network width (DCGAN base channel count)")
    parser.add_argument("--ray-steps", type=int, default=None, help="steps of the Ray Train run (default 64, quick 8)")
    parser.add_argument("--data", default=None,
                        help="a prepared 28 px dataset for the Ray run (default: Fashion-MNIST, prepared here)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    train_steps = args.ray_steps or (8 if args.quick else 64)

    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 instructions: {cpu_has_bf16()}")
    start = time.perf_counter()
    bench_step([int(s) for s in args.sizes.split(",")], args.width, args.steps, rounds)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        bench_ray(args.data, args.width, train_steps, args.steps, rounds, Path(work))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
