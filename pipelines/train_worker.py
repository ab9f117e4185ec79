"""The function each Ray Train worker runs: data shard in, checkpoints and MLflow metrics out.

Rank 0 alone talks to MLflow and writes checkpoints; every rank calls
`ray.train.report` at the same steps, as Ray Train requires. Host syncs happen
only at logging/checkpoint intervals: per-step statistics stay on the device
until then and are fetched in one transfer.
"""

from __future__ import annotations

import math
import tempfile
import time
from typing import Iterator

import pyarrow as pa
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from wgan import checkpoint as ckpt, precision
from wgan.config import TrainConfig
from wgan.data.images import unpack_images
from wgan.data.in_memory import shuffled_batches
from wgan.data.reader import decode_images
from wgan.images import grid, to_uint8
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers, unwrap
from pipelines import objective, tracking
from pipelines.objective import SampleQuality
from pipelines.resilient_logging import BufferedMlflowClient

GRID_SAMPLES = 64
# Rows held by Ray Data's local shuffle buffer: enough to decorrelate consecutive
# batches of one parquet row group without holding a whole shard.
SHUFFLE_BUFFER = 2048


def real_batches(cfg: TrainConfig, device: torch.device,
                 in_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless stream of (images, labels) from this worker's Ray Data shard, epoch after epoch.

    ``in_memory`` (a dataset the driver materialized: it is small): the shard is read
    once into uint8 pixels on ``device`` and reshuffled there every epoch, so the hot
    loop runs no Ray Data iterator, decode or host-to-device copy. Else it streams.
    """
    shard = ray.train.get_dataset_shard("train")
    batch = cfg.per_worker_batch
    if in_memory:
        table = pa.concat_tables(shard.iter_batches(batch_size=None, batch_format="pyarrow"))
        pixels = torch.from_numpy(unpack_images(table.column("image"), cfg.image_size, cfg.channels).copy())
        labels = torch.from_numpy(table.column("label").to_numpy()).to(torch.int64)
        yield from shuffled_batches(pixels.to(device), labels.to(device), batch, seed=cfg.seed)
        return
    epoch = 0
    while True:
        yielded = False
        for table in shard.iter_batches(batch_size=batch, batch_format="pyarrow", drop_last=True,
                                        local_shuffle_buffer_size=SHUFFLE_BUFFER,
                                        local_shuffle_seed=cfg.seed * 7919 + epoch):
            images = decode_images(table.column("image"), cfg.image_size, cfg.channels)
            labels = torch.tensor(table.column("label").to_numpy())
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            yielded = True
        if not yielded:
            raise RuntimeError(f"this worker's data shard holds fewer than one batch of {batch} images")
        epoch += 1


def grid_latents(fixed_z: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The progress grid's latents, labels and row length: 8 x 8 samples, or for a conditional
    run one row per class, the same 8 latents in every row (so a column shows one latent's classes)."""
    if not num_classes:
        return fixed_z, None, 8
    return fixed_z[:8].repeat(num_classes, 1), torch.arange(num_classes).repeat_interleave(8), 8


def _all_finite(history: list[tuple[int, dict[str, float]]], device: torch.device) -> bool:
    ok = all(math.isfinite(v) for _, values in history for v in values.values())
    if dist.is_available() and dist.is_initialized():
        flag = torch.tensor([1.0 if ok else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = bool(flag.item() > 0)
    return ok


def train_loop_per_worker(config: dict) -> None:
    cfg = TrainConfig.from_dict(config["train_config"])
    run_id: str = config["mlflow_run_id"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config.get("torch_threads"):
        torch.set_num_threads(config["torch_threads"])
    device = ray.train.torch.get_device()

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    generator, critic = build_generator(cfg).to(device), build_critic(cfg).to(device)
    g_opt, d_opt = build_optimizers(cfg, generator, critic)
    fixed_z = torch.randn(GRID_SAMPLES, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    start = 0
    # This run's own latest checkpoint (a restarted worker group, --resume); else, for a
    # PBT exploit, the checkpoint of the trial it continues from.
    restored = ray.train.get_checkpoint()
    if restored is None and config.get("init_checkpoint"):
        restored = ray.train.Checkpoint(config["init_checkpoint"])
    if restored:
        with restored.as_directory() as directory:
            payload = ckpt.load(directory)
        generator.load_state_dict(payload["generator"])
        critic.load_state_dict(payload["critic"])
        g_opt.load_state_dict(payload["g_optimizer"])
        d_opt.load_state_dict(payload["d_optimizer"])
        fixed_z, start = payload["fixed_z"], payload["step"]
        for optimizer in (g_opt, d_opt):  # this run's learning rate (PBT perturbs it), not the saved one
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr
    # Rank 0 keeps the moving average of the generator (--g-ema): it samples, it is logged.
    ema = None
    if cfg.g_ema and rank == 0:
        ema = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(cfg.g_ema), use_buffers=True)
        if restored and payload.get("generator_ema"):
            ema.load_state_dict(payload["generator_ema"])
    # Different latents on each rank, reproducible per (seed, rank, step).
    torch.manual_seed(hash((cfg.seed, rank, start)) % 2**63)
    if restored and world == 1:
        ckpt.set_rng_state(payload["rng"])

    if cfg.gpu and world > 1:
        # Batch statistics over the global batch, so N workers train like one with the whole batch.
        generator = torch.nn.SyncBatchNorm.convert_sync_batchnorm(generator)
        critic = torch.nn.SyncBatchNorm.convert_sync_batchnorm(critic)
    generator = ray.train.torch.prepare_model(generator)
    critic = ray.train.torch.prepare_model(critic)
    step_fn = TrainStep(cfg, generator, critic, g_opt, d_opt)
    sampler = ema.module if ema is not None else unwrap(generator)
    # Rank 0 logs through a queue drained by a background thread: training never waits on
    # MLflow, and a tracking-server outage is retried, warned about once, and recorded.
    client = BufferedMlflowClient(config["tracking_uri"]) if rank == 0 else None
    quality = (SampleQuality(config["objective"], cfg.z_dim, cfg.num_classes, device)
               if config.get("objective") and rank == 0 else None)
    if client is not None:
        client.set_tag(run_id, "wganctl.precision", step_fn.precision)  # what "auto" became here
    if restored and client is not None:
        # Visible in the run: where a restart (worker failure or --resume) picked up.
        client.log_metric(run_id, "train/resumed_from_step", start, step=start)
    progress = config.get("progress_queue")

    data = real_batches(cfg, device, in_memory=config.get("in_memory", False))
    pending: list[tuple[int, dict[str, torch.Tensor]]] = []
    images_per_step = cfg.n_critic * cfg.batch
    tick, tick_step = time.perf_counter(), start

    for step in range(start + 1, cfg.steps + 1):
        stats = step_fn(next(data) for _ in range(cfg.n_critic))
        if ema is not None:
            ema.update_parameters(unwrap(generator))
        pending.append((step, stats))
        last = step == cfg.steps
        checkpoint_now = last or step % cfg.checkpoint_every == 0
        if not (checkpoint_now or step % cfg.log_every == 0):
            continue

        keys = list(stats)
        values = torch.stack([torch.stack([s[k] for k in keys]) for _, s in pending]).tolist()  # one sync
        now = time.perf_counter()
        rate = images_per_step * (step - tick_step) / max(now - tick, 1e-9)
        tick, tick_step = now, step
        history = [(st, dict(zip(keys, row))) for (st, _), row in zip(pending, values)]
        pending = []
        if step_fn.precision == "fp16":
            history = precision.without_skipped_steps(history)
        if not _all_finite(history, device):
            # Every rank stops here (they agreed through all_reduce); rank 0 tells the driver
            # through the MLflow run, which outlives this worker group.
            if rank == 0:
                bad = next(((st, k) for st, vals in history for k, v in vals.items() if not math.isfinite(v)),
                           (step, "a value on another worker"))
                client.set_tag(run_id, tracking.DIVERGED_TAG, f"{bad[1]} became non-finite at step {bad[0]}")
                client.close()
            return
        if rank == 0:
            history[-1][1]["throughput/images_per_s"] = rate
            client.log_batch(run_id, metrics=tracking.metrics_batch(history, int(time.time() * 1000)),
                             synchronous=False)
            if progress is not None:
                try:
                    progress.put_nowait({"step": step, **history[-1][1]})
                except Exception:  # a full queue only drops a progress update
                    pass
            if last or step % cfg.sample_every == 0:
                sampler.eval()
                with torch.no_grad():
                    z, labels, per_row = grid_latents(fixed_z, cfg.num_classes)
                    pictures = to_uint8(sampler(z.to(device), None if labels is None else labels.to(device)))
                sampler.train()
                tracking.log_grid(client, run_id, grid(pictures, nrow=per_row), step)

        if not checkpoint_now:
            continue
        metrics = {"step": step, **history[-1][1]}
        if quality is not None:
            metrics[objective.METRIC] = quality(sampler)
            client.log_metric(run_id, objective.METRIC, metrics[objective.METRIC], step=step, synchronous=False)
        if rank == 0:
            with tempfile.TemporaryDirectory() as directory:
                ckpt.save(directory, step=step, cfg=cfg, generator=unwrap(generator), critic=unwrap(critic),
                          g_optimizer=g_opt, d_optimizer=d_opt, fixed_z=fixed_z, mlflow_run_id=run_id,
                          generator_ema=ema)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                                 checkpoint_dir_name=f"checkpoint_{step:07d}")
        else:
            ray.train.report(metrics)
    if client is not None:
        client.close()
