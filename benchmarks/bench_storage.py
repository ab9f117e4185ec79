"""Checkpoint storage cost: seconds per checkpoint (save + report) and per restore, local directory vs s3://.

Run from the repository root (offline: the S3 server is moto's, on 127.0.0.1, inside this process):

    .venv/bin/python benchmarks/bench_storage.py [--widths 32,64] [--checkpoints 5]

Per width, real Ray Train runs (local Ray, one CPU worker) at the main job's settings
(`pipelines.quickstart.MAIN_JOB`: WGAN-GP, Fashion-MNIST 28 px, 1 channel), storage_path a local
temporary directory and s3://wganctl-bench/ckpt, side by side (order alternated per width). The
worker builds the real networks and optimisers, takes one step (so Adam's moments exist), then
--checkpoints times, as `pipelines.train_worker` does: `wgan.checkpoint.save` into a temporary
directory ("save") and `ray.train.report(checkpoint=...)` ("report": Ray's rank broadcast, the
copy into storage, the result queue). Each save starts 0.5 s after the last report (twice Ray's
local poll interval; in a job, 250 steps lie between two); 0.5 s after each report the same
directory is copied again, by pyarrow's copy_files as Ray calls it, into a scratch prefix of the
same storage ("copy alone"): report minus that is Ray's bookkeeping (the median of the
differences). A second fit of the same run name (how `wganctl train --resume` and a restarted
worker group resume) restores its latest checkpoint --checkpoints times:
`get_checkpoint().as_directory()` ("fetch": a download for s3, nothing for a local path) and
`wgan.checkpoint.load` + load_state_dict ("load"). Medians.
"moto's CPU" is the CPU time of moto's request threads (a wrapper around its WSGI app) on that
copy's or fetch's requests: moto shares this 2-core machine, so that much of the s3 time is the
server's, which a real object store would spend elsewhere (network latency instead).
Seen in moto's request log: pyarrow uploads a file as a multipart upload (create, one part per
10 MiB, complete) and downloads it with a HEAD and a ranged GET.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUCKET, PAUSE_S = "wganctl-bench", 0.5


def worker_loop(config: dict) -> None:
    import pyarrow.fs
    import ray.train
    import torch

    from wgan import checkpoint as ckpt
    from wgan.config import TrainConfig
    from wgan.networks import build_critic, build_generator
    from wgan.step import TrainStep, build_optimizers

    times, cfg, k = {"began": [time.time()]}, TrainConfig.from_dict(config["cfg"]), config["checkpoints"]
    g, d = build_generator(cfg), build_critic(cfg)
    g_opt, d_opt = build_optimizers(cfg, g, d)

    def add(**values: float) -> None:
        for key, value in values.items():
            times.setdefault(key, []).append(value)

    if (restored := ray.train.get_checkpoint()) is not None:  # the resumed run
        for _ in range(k):
            t0 = time.perf_counter()
            with restored.as_directory() as directory:
                t1 = time.perf_counter()
                payload = ckpt.load(directory)
                for module, key in ((g, "generator"), (d, "critic"), (g_opt, "g_optimizer"), (d_opt, "d_optimizer")):
                    module.load_state_dict(payload[key])
                add(fetch=t1 - t0, load=time.perf_counter() - t1)
        return config["timings"].put(times | {"ended": [time.time()]})
    TrainStep(cfg, g, d, g_opt, d_opt, precision_mode="fp32")((torch.rand(8, cfg.channels, cfg.image_size, cfg.image_size) * 2 - 1, None)
                                       for _ in range(cfg.n_critic))
    storage = ray.train.get_context().get_storage()
    fs = storage.storage_filesystem
    kwargs = {"chunk_size": 64 << 20} | ({"use_threads": False} if isinstance(fs, pyarrow.fs.S3FileSystem) else {})
    for i in range(1, k + 1):
        time.sleep(PAUSE_S)
        with tempfile.TemporaryDirectory() as directory:
            t0 = time.perf_counter()
            path = ckpt.save(directory, step=i, cfg=cfg, generator=g, critic=d, g_optimizer=g_opt, d_optimizer=d_opt,
                             fixed_z=torch.randn(64, cfg.z_dim), mlflow_run_id=None)
            t1 = time.perf_counter()
            ray.train.report({"step": i}, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=f"checkpoint_{i:07d}")
            t2 = time.perf_counter()
            time.sleep(PAUSE_S)
            t3 = time.perf_counter()
            scratch = f"{storage.storage_fs_path}/scratch/{storage.experiment_dir_name}/{i}"
            fs.create_dir(scratch)
            pyarrow.fs.copy_files(directory, scratch, destination_filesystem=fs, **kwargs)  # as Ray's report does
            copy = time.perf_counter() - t3
            add(save=t1 - t0, report=t2 - t1, copy=copy, bookkeeping=t2 - t1 - copy, mb=os.path.getsize(path) / 1e6)
    config["timings"].put(times | {"ended": [time.time()]})


class MotoMeter:
    """Wraps moto's WSGI app: CPU seconds of its request threads, and requests, per kind of path."""

    def __init__(self, app):
        self.app, self.lock, self.cpu, self.requests = app, threading.Lock(), Counter(), Counter()

    def __call__(self, environ, start_response):
        began = time.thread_time()
        body = list(self.app(environ, start_response))  # moto's bodies are in memory anyway
        url = unquote(environ.get("PATH_INFO", "") + "?" + environ.get("QUERY_STRING", ""))
        kind = "scratch" if "/scratch/" in url else "ckpt" if re.search(r"/checkpoint_\d+/", url) else "other"
        with self.lock:
            self.cpu[kind] += time.thread_time() - began
            self.requests[kind] += 1
        return body

    def take(self) -> tuple[Counter, Counter]:
        with self.lock:
            out = self.cpu.copy(), self.requests.copy()
            self.cpu.clear(), self.requests.clear()
        return out


def fit(cfg, storage_path: str, name: str, k: int, timings, meter: MotoMeter) -> dict[str, float]:
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(worker_loop, train_loop_config={"cfg": cfg.to_dict(), "checkpoints": k, "timings": timings},
                           scaling_config=ray.train.ScalingConfig(num_workers=1),
                           run_config=ray.train.RunConfig(name=name, storage_path=storage_path))
    meter.take()
    began = time.time()
    trainer.fit()
    ended = time.time()
    (cpu, requests), times = meter.take(), timings.get(timeout=60)
    out = {key: statistics.median(values) for key, values in times.items()}
    return out | {"fit": ended - began, "up": out["began"] - began, "down": ended - out["ended"],
                  **{f"moto {kind}": cpu[kind] / k for kind in ("scratch", "ckpt")},
                  **{f"requests {kind}": requests[kind] / k for kind in ("scratch", "ckpt")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="32,64", help="network widths (DCGAN base channels; the main job's: 32)")
    parser.add_argument("--checkpoints", type=int, default=5, help="checkpoints, and restores, per run")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",  # before Ray starts
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default 15 would hand the CPU to moto's threads
    import boto3
    import torch
    from moto.server import ThreadedMotoServer
    from ray.util.queue import Queue

    from pipelines.quickstart import MAIN_JOB
    from pipelines.cluster.connect import init_ray

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per S3 request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    meter = server._server.app = MotoMeter(server._server.app)
    start = time.perf_counter()
    try:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}; moto S3 on 127.0.0.1:{port} in this process")
        init_ray()
        timings = Queue(actor_options={"num_cpus": 0})  # Result.metrics are the latest checkpoint's, not ours
        with tempfile.TemporaryDirectory(prefix="bench-storage-") as work:
            for n, width in enumerate(int(w) for w in args.widths.split(",")):
                cfg = dataclasses.replace(MAIN_JOB, width=width, image_size=28, channels=1).resolved()
                out = {}
                for label, storage in [("local", work), ("s3", f"s3://{BUCKET}/ckpt")][::1 - 2 * (n % 2)]:
                    name = f"bench-storage-w{width}-{label}-{uuid.uuid4().hex[:8]}"
                    saved = fit(cfg, storage, name, args.checkpoints, timings, meter)
                    resumed = fit(cfg, storage, name, args.checkpoints, timings, meter)
                    out[label] = saved | {"r" + key: value for key, value in resumed.items()}
                table(width, args.checkpoints, out["local"], out["s3"])
    finally:
        server.stop()
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


ROWS = [("checkpoint = save + report", "checkpoint"), ("  save (torch.save, local disk)", "save"),
        ("  report (into storage)", "report"), ("    copy alone (pyarrow copy_files)", "copy"),
        ("      moto's CPU serving it", "moto scratch"), ("    Ray's bookkeeping (report - copy)", "bookkeeping"),
        ("restore = fetch + load", "restore"), ("  fetch (get_checkpoint().as_directory)", "rfetch"),
        ("    moto's CPU serving it", "rmoto ckpt"), ("  load (ckpt.load + load_state_dict)", "rload"),
        ("fit(), checkpointing run", "fit"), ("  start-up (fit() to the loop)", "up"),
        ("  end (loop to fit() returning)", "down"), ("fit(), resumed run", "rfit"),
        ("  start-up (fit() to the loop)", "rup"), ("  end (loop to fit() returning)", "rdown")]


def table(width: int, k: int, local: dict, s3: dict) -> None:
    for row in (local, s3):
        row["checkpoint"], row["restore"] = row["save"] + row["report"], row["rfetch"] + row["rload"]
    print(f"\n== width {width}, 28 px, 1 channel: checkpoint.pt {local['mb']:.2f} MB; {k} checkpoints and "
          f"{k} restores per storage, medians in seconds ==")
    print(f"{'':<42}{'local':>9}{'s3':>9}{'s3/local':>10}")
    for title, key in ROWS:
        ratio = f"{s3[key] / local[key]:.1f}x" if local[key] > 1e-3 else "-"
        print(f"{title:<42}{local[key]:>9.3f}{s3[key]:>9.3f}{ratio:>10}")
    print(f"s3 costs {s3['checkpoint'] - local['checkpoint']:+.3f} s per checkpoint and "
          f"{s3['restore'] - local['restore']:+.3f} s per restore: {s3['mb'] / s3['copy']:.0f} MB/s up in "
          f"{s3['requests scratch']:.0f} requests, {s3['mb'] / s3['rfetch']:.0f} MB/s down in "
          f"{s3['rrequests ckpt']:.0f}; moto's request handling (in this process) is "
          f"{100 * s3['moto scratch'] / s3['copy']:.0f}% of the upload's time, "
          f"{100 * s3['rmoto ckpt'] / s3['rfetch']:.0f}% of the download's", flush=True)


if __name__ == "__main__":
    main()
