"""The function each Ray Train worker runs: data shard in, checkpoints and MLflow metrics out.

Rank 0 alone talks to MLflow and writes checkpoints; every rank calls
`ray.train.report` at the same steps, as Ray Train requires. Host syncs happen
only at logging/checkpoint intervals: per-step statistics stay on the device
until then and are fetched in one transfer.

A worker that raises still gets rank 0's queued logging into MLflow: the loop
runs under `flushed_on_error`, which sends the queue (at most
ERROR_FLUSH_TIMEOUT_S) and tags what could not be sent before the error goes on
to Ray Train.

Test hook: ``config["fail_at_step"]`` (the driver sets it from the environment
variable WGANCTL_TEST_FAIL_AT_STEP) makes every rank raise a RuntimeError right
after that step's training, before its logging flush: a worker error at a known
step, for tests of the failure path. Unset, it costs one comparison a step.
"""

from __future__ import annotations

import contextlib
import logging
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
from pipelines import checkpoints, objective, tracking
from pipelines.objective import SampleQuality
from pipelines.resilient_logging import BufferedMlflowClient

logger = logging.getLogger(__name__)

GRID_SAMPLES = 64
# How long a failing rank 0 may spend sending its queued logging before the error goes on
# to Ray Train (which then restarts or fails the run). A reachable server takes even a full
# queue in that time (metrics go 1000 to a request; at most 50 grids), and it is how long
# the client waits on one hung send before calling it an outage (stall_warning_s): past it
# the server is down, and waiting longer would only delay the restart from the checkpoint.
ERROR_FLUSH_TIMEOUT_S = 30.0
# How long rank 0 waits, before reporting a checkpoint, for the logging of the steps before it
# to reach MLflow (a worker killed right after the report lost them otherwise: the restart
# does not replay them; seen as steps 19-20 missing in tests/test_object_store.py). A
# reachable server takes one interval's metrics and grid in well under a second; the bound
# only caps a slow one, and an outage is not waited for at all.
CHECKPOINT_SYNC_TIMEOUT_S = 10.0
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


@contextlib.contextmanager
def flushed_on_error(client: BufferedMlflowClient | None, timeout: float = ERROR_FLUSH_TIMEOUT_S):
    """If the block raises: send ``client``'s queue (at most ``timeout`` s), tag the outcome, re-raise.

    Without it the queue dies with the worker: Ray Train kills a failed worker group within
    seconds (its health-check poll), whatever the sender thread has not sent yet.
    """
    try:
        yield
    except BaseException:
        if client is not None:
            try:
                client.close(timeout=timeout)
            except Exception:  # noqa: BLE001 - the training error is the one to report
                logger.exception("could not send the queued MLflow logging of the failed worker")
        raise


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point: the training loop, whose logging reaches MLflow even if it raises."""
    # Rank 0 logs through a queue drained by a background thread: training never waits on
    # MLflow, and a tracking-server outage is retried, warned about once, and recorded.
    client = BufferedMlflowClient(config["tracking_uri"]) if ray.train.get_context().get_world_rank() == 0 else None
    with flushed_on_error(client):
        _train(config, client)


def _train(config: dict, client: BufferedMlflowClient | None) -> None:
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
    fail_at_step = config.get("fail_at_step")  # the test hook, see the module docstring

    for step in range(start + 1, cfg.steps + 1):
        stats = step_fn(next(data) for _ in range(cfg.n_critic))
        if ema is not None:
            ema.update_parameters(unwrap(generator))
        if step == fail_at_step:
            raise RuntimeError(f"injected fault at step {step} (WGANCTL_TEST_FAIL_AT_STEP)")
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
            # A restart resumes from this checkpoint and does not replay the steps before it:
            # their metrics and grids must be in MLflow before it is reported.
            client.sync(CHECKPOINT_SYNC_TIMEOUT_S)
            with tempfile.TemporaryDirectory() as directory:
                ckpt.save(directory, step=step, cfg=cfg, generator=unwrap(generator), critic=unwrap(critic),
                          g_optimizer=g_opt, d_optimizer=d_opt, fixed_z=fixed_z, mlflow_run_id=run_id,
                          generator_ema=ema)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                                 checkpoint_dir_name=checkpoints.dir_name(step))
        else:
            ray.train.report(metrics)
    if client is not None:
        client.close()
