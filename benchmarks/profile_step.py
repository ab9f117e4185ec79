"""Where one training step's time goes: the top kernels of our WGAN-GP step, by torch.profiler.

    python benchmarks/profile_step.py --device cuda [--size 64] [--batch 1024] [--precision bf16]

Prints the operators that take the most device time (self time, CUDA on a GPU, CPU otherwise)
over a few steps after a warm-up, so that a low share of the hardware's peak (bench_train.py)
can be traced to the kernels that cause it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train import config, networks, our_step, real_batches  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=18)
    parser.add_argument("--cudnn-benchmark", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    cfg = config(args.size, args.width, batch=args.batch)
    step, reals = our_step(cfg, *networks(cfg, device), precision_mode=args.precision), real_batches(cfg, device)
    step(reals)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step(reals)
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"== {args.steps} steps, {args.size} px, batch {args.batch}, width {args.width}, {args.precision}, {device}, "
          f"cudnn.benchmark {args.cudnn_benchmark} ==")
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
