"""Training throughput: our WGAN-GP step against a plain PyTorch loop, and through Ray Train + MLflow.

Run from the repository root (offline is fine):

    .venv/bin/python benchmarks/bench_train.py [--quick] [--sizes 28,32,64] [--steps N] [--width 64]
    python benchmarks/bench_train.py --device cuda --no-ray [--batch 512]     # on a GPU machine

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
   * bf16 autocast: on a GPU, and on a CPU only where it has bf16 instructions (avx512_bf16 /
     amx_bf16); oneDNN emulates bf16 elsewhere, about 10x slower than float32;
   * on a GPU also fp16 autocast with loss scaling, and bf16 with channels_last.
   With --device cuda every contender runs on the GPU (fp32 convolutions there use TF32, PyTorch's
   default for cuDNN), timed between CUDA synchronisations, and the table adds the achieved
   TFLOP/s (FLOPs of one plain-loop step counted by torch.utils.flop_counter: convolutions and
   matrix products, forward, backward and the penalty's double backward) and its share of the
   card's dense bf16 peak.
2. Ray Train: `pipelines.train.train` with one worker (a CPU process; with --device cuda one
   GPU worker, as `--gpu` trains), MLflow on (a temporary sqlite store), on Fashion-MNIST 28 px
   prepared into a temporary directory (or --data), with the default logging interval
   (shortened for runs too short to hold 8 intervals). A run's rate is the median of its logged
   `throughput/images_per_s` values without the first interval (start-up). --ray-rounds runs
   (default: --rounds), each between two rounds of timing of the plain loop and our step before it
   and two after it, each round as long as one logged interval of the run (sustained rates on
   both sides), at the same settings (and, on a CPU, the worker's torch thread count) in this
   process; a run's ratio is its rate over the median of those four, so that a slow drift of a
   shared machine cancels, and the table gives the median of the runs' ratios. The
   data is held by the worker, as for any dataset that fits (--stream: streamed through Ray
   Data's iterator, the path of larger ones). Ray's workers run at nice 0 here, not Ray's
   default 15, so that they compete for the CPU as this process does.
   Ray Train + MLflow / plain is the target; / ours is the pipeline's own overhead.
3. System metrics (--system-metrics): the same Ray Train + MLflow run with rank 0's system metrics
   (MLflow's monitor, every `pipelines.tracking.system_metrics.SAMPLING_INTERVAL_S`) on and off,
   in turns (the order swapped each round); a run's rate is its median logged rate as in 2, in
   generator steps/s, and the table gives each setting's median and the median of the rounds'
   on / off ratios, with the samples each "on" run logged (runs must last several intervals).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.cluster import console  # noqa: E402
from wgan.config import RunSettings, TrainConfig  # noqa: E402
from pipelines.stage_options import PrepareOptions  # noqa: E402
from wgan.networks import build_critic, build_generator  # noqa: E402
from wgan import precision  # noqa: E402
from wgan.precision import cpu_has_bf16  # noqa: E402
from wgan.step import TrainStep, build_optimizers  # noqa: E402

CHANNELS = {28: 1, 32: 3, 64: 3}
Step = Callable[[list[torch.Tensor]], None]  # one generator step on n_critic real batches


# Dense bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets (SXM parts).
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def config(size: int, width: int, **overrides) -> TrainConfig:
    return TrainConfig(image_size=size, channels=CHANNELS[size], width=width, **overrides).resolved()


def networks(cfg: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)  # the same initial weights for every contender
    return build_generator(cfg).to(device), build_critic(cfg).to(device)


def plain_step(cfg: TrainConfig, generator: torch.nn.Module, critic: torch.nn.Module) -> Step:
    """Gulrajani et al. 2017, Algorithm 1, written as textbook PyTorch."""
    g_opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas)
    d_opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr, betas=cfg.betas)

    def step(reals: list[torch.Tensor]) -> None:
        n, device = reals[0].shape[0], reals[0].device
        for real in reals:
            with torch.no_grad():
                fake = generator(torch.randn(n, cfg.z_dim, device=device))
            eps = torch.rand(n, 1, 1, 1, device=device)
            x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
            (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
            penalty = ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
            loss = critic(fake).mean() - critic(real).mean() + cfg.lambda_gp * penalty
            d_opt.zero_grad()
            loss.backward()
            d_opt.step()
        critic.requires_grad_(False)
        g_loss = -critic(generator(torch.randn(n, cfg.z_dim, device=device))).mean()
        g_opt.zero_grad()
        g_loss.backward()
        g_opt.step()
        critic.requires_grad_(True)

    return step


def our_step(cfg: TrainConfig, generator: torch.nn.Module, critic: torch.nn.Module,
             channels_last: bool = False, precision_mode: str = "fp32", fused: bool = False) -> Step:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    generator, critic = generator.to(memory_format=layout), critic.to(memory_format=layout)
    train_step = TrainStep(cfg, generator, critic, *build_optimizers(cfg, generator, critic, fused=fused),
                           precision_mode=precision_mode)

    def step(reals: list[torch.Tensor]) -> None:
        train_step((real.contiguous(memory_format=layout), None) for real in reals)

    return step


def defaults_step(cfg: TrainConfig, device: torch.device) -> Step:
    """Our step as a run takes it: precision auto, its layout (`wgan.precision.memory_format`), the
    optimizers `build_optimizers` chooses."""
    mode = precision.effective("auto", device)
    layout = precision.memory_format(mode, device)
    return our_step(cfg, *networks(cfg, device), channels_last=layout == torch.channels_last, precision_mode=mode,
                    fused=None)


def contenders(cfg: TrainConfig, device: torch.device, compile_generator: bool) -> dict[str, Step]:
    out = {"plain loop": plain_step(cfg, *networks(cfg, device)), "ours": our_step(cfg, *networks(cfg, device))}
    out["ours + fused Adam"] = our_step(cfg, *networks(cfg, device), fused=True)
    out["ours + channels_last"] = our_step(cfg, *networks(cfg, device), channels_last=True)
    if compile_generator:
        g, d = networks(cfg, device)
        out["ours + compiled G"] = our_step(cfg, torch.compile(g), d)
    if device.type == "cuda" or cpu_has_bf16():
        out["ours + bf16 autocast"] = our_step(cfg, *networks(cfg, device), precision_mode="bf16")
        out["ours + bf16 + ch_last"] = our_step(cfg, *networks(cfg, device), channels_last=True, precision_mode="bf16")
    if device.type == "cuda":
        out["ours + fp16 + scaler"] = our_step(cfg, *networks(cfg, device), precision_mode="fp16")
    out["ours, run defaults"] = defaults_step(cfg, device)
    return out


class _OneScope:
    """Stands in for FlopCounterMode's per-module tracker, whose hooks refuse autograd.grad."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def flops_per_step(cfg: TrainConfig, device: torch.device, reals: list[torch.Tensor]) -> int:
    """FLOPs of one plain-loop step (every contender does the same arithmetic)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _OneScope()
    step = plain_step(cfg, *networks(cfg, device))
    with counter:
        step(reals)
    return counter.get_total_flops()


def synchronize(reals: list[torch.Tensor]) -> None:
    if reals[0].is_cuda:
        torch.cuda.synchronize()


def seconds(step: Step, reals: list[torch.Tensor], steps: int) -> float:
    synchronize(reals)
    start = time.perf_counter()
    for _ in range(steps):
        step(reals)
    synchronize(reals)
    return time.perf_counter() - start


def measure(steps_by_name: dict[str, Step], reals: list[torch.Tensor], steps: int,
            rounds: int) -> dict[str, list[float]]:
    """images/s of each contender in each of ``rounds`` turns, order rotated each round, after a warm-up step."""
    images = len(reals) * reals[0].shape[0] * steps
    names = []
    for name, step in steps_by_name.items():
        try:
            step(reals)  # warm-up (and compilation)
            names.append(name)
        except Exception as error:  # one broken contender (a compiler bug, say) leaves the others' figures
            print(f"({name}: failed, left out: {type(error).__name__}: {str(error).splitlines()[0][:160]})")
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(images / seconds(steps_by_name[name], reals, steps))
    return rates


def ratio(rates: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of ``name``'s rate over ``base``'s in the same round (cancels slow drifts)."""
    return statistics.median(a / b for a, b in zip(rates[name], rates[base]))


def real_batches(cfg: TrainConfig, device: torch.device = torch.device("cpu")) -> list[torch.Tensor]:
    return [torch.rand(cfg.batch, cfg.channels, cfg.image_size, cfg.image_size, device=device) * 2 - 1
            for _ in range(cfg.n_critic)]


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for chip, peak in BF16_PEAK_TFLOPS.items() if chip in name), None)


def bench_step(sizes: list[int], width: int, batch: int, steps: int, rounds: int, device: torch.device,
               compile_generator: bool) -> None:
    print(f"\n== training step on {device.type}, width {width}, batch {batch}, n_critic 5: "
          f"{rounds} rounds of {steps} steps, medians ==")
    if device.type == "cpu" and not cpu_has_bf16():
        print("(ours + bf16 autocast: skipped, this CPU has no bf16 instructions)")
    peak = bf16_peak(device)
    print(f"{'size':>8}  {'contender':<22} {'images/s':>9}  {'/ plain':>7}  {'/ ours':>6}  {'TFLOP/s':>8}"
          + (f"  {'% bf16 peak':>11}" if peak else ""))
    for size in sizes:
        cfg = config(size, width, batch=batch)
        start = time.perf_counter()
        reals = real_batches(cfg, device)
        flops = flops_per_step(cfg, device, reals)
        rates = measure(contenders(cfg, device, compile_generator), reals, steps, rounds)
        for name, values in rates.items():
            rate = statistics.median(values)
            tflops = flops * rate / (cfg.n_critic * cfg.batch) / 1e12
            print(f"{size:>3} px {cfg.channels}c  {name:<22} {rate:>9.1f}  "
                  f"{ratio(rates, name, 'plain loop'):>6.2f}x  {ratio(rates, name, 'ours'):>5.2f}x  {tflops:>8.3f}"
                  + (f"  {100 * tflops / peak:>10.2f}%" if peak else ""))
        print(f"({size} px: {flops / 1e9:.1f} GFLOP per step; took {time.perf_counter() - start:.0f} s)", flush=True)


def ray_setup(data_dir: str | None, work: Path, stream: bool) -> str:
    """A local Ray and an MLflow store in ``work``; the prepared data (Fashion-MNIST 28 px, prepared there)."""
    import pipelines.train
    from pipelines.cluster.connect import init_ray
    from pipelines.prepare import prepare

    os.chdir(work)  # the MLflow store, its artifacts and Ray's results stay in the temporary directory
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["RAY_worker_niceness"] = "0"  # Ray's default 15 starves the worker on a shared machine
    if stream:  # the path of a dataset too large to hold: every batch through Ray Data's iterator
        pipelines.train.MATERIALIZE_MAX_SHARE = 0.0
    init_ray()
    if data_dir is None:  # a second call finds it up to date
        data_dir = prepare("fashion-mnist", options=PrepareOptions(size=28, splits=["train"]), out=str(work / "fm28"), progress=False).out
    return data_dir


def ray_run(width: int, train_steps: int, work: Path, gpu: bool) -> tuple[TrainConfig, RunSettings]:
    """The Ray run's config and settings: the default logging interval, shortened where the run
    is too short for 8 intervals."""
    cfg = config(28, width, steps=train_steps)
    settings = RunSettings(log_every=min(RunSettings.log_every, max(1, train_steps // 8)), gpu=gpu, precision="fp32",
                           storage_path=str(work / "ray_results"))
    return cfg, settings


def logged_rate(client, run_id: str) -> float:
    """A run's rate: the median of its logged images/s without the first interval (start-up)."""
    history = sorted(client.get_metric_history(run_id, "throughput/images_per_s"), key=lambda m: m.step)
    return statistics.median(m.value for m in history[1:])


def bench_ray(data_dir: str | None, width: int, train_steps: int, steps: int, rounds: int, work: Path,
              device: torch.device, stream: bool) -> None:
    from mlflow.tracking import MlflowClient

    import pipelines.train
    from pipelines.cluster.connect import worker_resources

    gpu = device.type == "cuda"
    print(f"\n== Ray Train, 1 {'GPU' if gpu else 'CPU'} worker, MLflow logging on, 28 px, {rounds} runs of "
          f"{train_steps} steps, data {'streamed through Ray Data' if stream else 'held by the worker'} ==")
    data_dir = ray_setup(data_dir, work, stream)
    cfg, settings = ray_run(width, train_steps, work, gpu)
    if not gpu:
        torch.set_num_threads(worker_resources(1, False, local=True)[1])  # the worker's thread count
    loops = {"plain loop": plain_step(cfg, *networks(cfg, device)), "ours": our_step(cfg, *networks(cfg, device))}
    reals = real_batches(cfg, device)
    # The loops are timed over as many steps as one logged interval of the run (sustained, like
    # the run's rate): 2-step timings here read 13% above 20-step ones for the plain loop.
    window = max(steps, settings.log_every)
    ratios: dict[str, list[float]] = {name: [] for name in loops}
    pipeline_rates = []
    for r in range(rounds):
        # Each Ray run sits between two timings of the loops, so a slow drift of the machine cancels.
        before = measure(loops, reals, window, 2)
        start = time.perf_counter()
        result = pipelines.train.train(cfg, data_dir, experiment="bench-train", run=settings, progress=False)
        seconds = time.perf_counter() - start
        after = measure(loops, reals, window, 2)
        history = sorted(MlflowClient().get_metric_history(result.run_id, "throughput/images_per_s"),
                         key=lambda m: m.step)
        rate = logged_rate(MlflowClient(), result.run_id)
        # over all intervals, weighted by time (their step counts are equal): checkpoints and grids included
        overall = statistics.harmonic_mean([m.value for m in history[1:]])
        pipeline_rates.append(rate)
        line = f"run {r + 1}: Ray Train + MLflow {rate:.1f} images/s (median of {len(history) - 1} intervals " \
               f"after the first; {overall:.1f} over all of them, checkpoints and grids included; " \
               f"train() {seconds:.0f} s)"
        for name in loops:
            loop = statistics.median(before[name] + after[name])
            ratios[name].append(rate / loop)
            line += (f"; {name} {loop:.1f} ({statistics.mean(before[name]):.1f} before, "
                     f"{statistics.mean(after[name]):.1f} after): "
                     f"{rate / loop:.2f}x")
        print(line, flush=True)
    print(f"Ray Train + MLflow: {statistics.median(pipeline_rates):.1f} images/s (median of {rounds} runs)")
    for name in loops:
        print(f"Ray Train + MLflow / {name}: {statistics.median(ratios[name]):.2f}x "
              f"(median of the runs' ratios: {', '.join(f'{x:.2f}' for x in ratios[name])})")


def bench_system_metrics(data_dir: str | None, width: int, train_steps: int, rounds: int, work: Path,
                         device: torch.device, stream: bool) -> None:
    """Ray Train + MLflow with rank 0's system metrics on against off, in turns."""
    from mlflow.tracking import MlflowClient

    import pipelines.train
    from pipelines.tracking import system_metrics

    gpu = device.type == "cuda"
    interval = system_metrics.SAMPLING_INTERVAL_S or 10.0
    print(f"\n== Ray Train + MLflow, 1 {'GPU' if gpu else 'CPU'} worker, system metrics every {interval:g} s "
          f"on and off, {rounds} rounds of a run each, {train_steps} steps, width {width} ==")
    data_dir = ray_setup(data_dir, work, stream)
    cfg, settings = ray_run(width, train_steps, work, gpu)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for r in range(rounds):
            for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                system_metrics.SAMPLING_INTERVAL_S = interval if name == "on" else None
                start = time.perf_counter()
                result = pipelines.train.train(cfg, data_dir, experiment="bench-system-metrics", run=settings,
                                               progress=False)
                seconds = time.perf_counter() - start
                client = MlflowClient()
                rate = logged_rate(client, result.run_id) / (cfg.n_critic * cfg.batch)
                rates[name].append(rate)
                samples = len(client.get_metric_history(result.run_id, "system/cpu_utilization_percentage"))
                print(f"round {r + 1}, system metrics {name}: {rate:.3f} steps/s ({samples} samples; "
                      f"train() {seconds:.0f} s)", flush=True)
    finally:
        system_metrics.SAMPLING_INTERVAL_S = interval
    ratios = [on / off for on, off in zip(rates["on"], rates["off"])]
    print(f"system metrics on: {statistics.median(rates['on']):.3f} steps/s, off: "
          f"{statistics.median(rates['off']):.3f} steps/s (medians of {rounds} runs); on / off: "
          f"{statistics.median(ratios):.3f}x (the rounds': {', '.join(f'{x:.3f}' for x in ratios)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one step per round, a short Ray run (smoke test)")
    parser.add_argument("--sizes", default="28,32,64", help="image sizes of the step benchmark (28, 32, 64; empty: skip it)")
    parser.add_argument("--steps", type=int, default=1, help="generator steps per timed round")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per contender (default 3, quick 1)")
    parser.add_argument("--width", type=int, default=64, help="network width (DCGAN base channel count)")
    parser.add_argument("--batch", type=int, default=64, help="batch of the step benchmark (the papers': 64)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where both benchmarks run (cuda: the Ray Train run trains with --gpu)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Train + MLflow part")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled-generator contender")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its convolution algorithms and keep the fastest (fixed shapes)")
    parser.add_argument("--ray-steps", type=int, default=None, help="steps of the Ray Train run (default 64, quick 8)")
    parser.add_argument("--ray-rounds", type=int, default=None,
                        help="Ray Train runs, each between two timings of the loops (default: --rounds)")
    parser.add_argument("--stream", action="store_true",
                        help="stream the Ray run's data through Ray Data, as for a dataset too large to hold")
    parser.add_argument("--system-metrics", action="store_true",
                        help="also Ray Train + MLflow with rank 0's system metrics on against off (steps/s, ratio)")
    parser.add_argument("--data", default=None,
                        help="a prepared 28 px dataset for the Ray run (default: Fashion-MNIST, prepared here)")
    args = parser.parse_args()
    console.quiet()  # the tables only: Ray's and MLflow's logging stays in Ray's log files (as `wganctl` does)
    rounds = args.rounds or (1 if args.quick else 3)
    train_steps = args.ray_steps or (8 if args.quick else 64)

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 instructions: {cpu_has_bf16()}"
          + (f"; GPU {torch.cuda.get_device_name(device)}, cudnn.benchmark {args.cudnn_benchmark}"
             if device.type == "cuda" else ""))
    start = time.perf_counter()
    if args.sizes:
        bench_step([int(s) for s in args.sizes.split(",")], args.width, args.batch, args.steps, rounds, device,
                   compile_generator=not args.no_compile)
    if not args.no_ray or args.system_metrics:
        with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
            data = args.data and os.path.abspath(args.data)
            if not args.no_ray:
                bench_ray(data, args.width, train_steps, args.steps, args.ray_rounds or rounds, Path(work), device,
                          args.stream)
            if args.system_metrics:
                bench_system_metrics(data, args.width, train_steps, args.ray_rounds or rounds, Path(work), device,
                                     args.stream)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
