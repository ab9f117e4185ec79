"""The function each Ray Train worker runs: data shard in, checkpoints and MLflow metrics out.

Rank 0 alone talks to MLflow and writes checkpoints; every rank calls
`ray.train.report` at the same steps, as Ray Train requires. Host syncs happen
only at logging/checkpoint intervals: per-step statistics stay on the device
until then and are fetched in one transfer.

A worker that raises still gets rank 0's queued logging into MLflow: the loop
runs under `flushed_on_error`, which sends the queue (at most
ERROR_FLUSH_TIMEOUT_S) and tags what could not be sent before the error goes on
to Ray Train.

Everything that crosses the Ray hop is one `pipelines.train_hop.WorkerConfig`, its fields named once.

Test hook: ``WorkerConfig.fail_at_step`` (the driver sets it from the environment
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
from dataclasses import dataclass
from typing import Iterator

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from wgan import checkpoint as ckpt, precision
from pipelines.train_hop import WorkerConfig
from wgan.config import RunSettings, TrainConfig
from wgan.data import fs as datafs
from wgan.data.images import unpack_images
from wgan.data.in_memory import shuffled_batches
from wgan.data.reader import decode_images
from wgan.images import grid, to_uint8
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers, build_schedulers, state_in_layout, unwrap
from pipelines import objective, tracking
from pipelines.cluster import checkpoints
from pipelines.tracking import run_tags
from pipelines.objective import SampleQuality
from pipelines.tracking.resilient_logging import BufferedMlflowClient
from pipelines.tracking.system_metrics import SystemMetrics

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
                 in_memory: ray.ObjectRef | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless stream of (images, labels) from this worker's share of the data, epoch after epoch.

    ``in_memory`` (the whole dataset as a pyarrow table the driver put in the object store: it is
    small): this worker's equal share of the rows, as Ray Data would split them, is read once into
    uint8 pixels on ``device`` and reshuffled there every epoch, so the hot loop runs no iterator,
    decode or host-to-device copy. Else this worker's Ray Data shard streams.
    """
    context = ray.train.get_context()
    batch = cfg.batch // context.get_world_size()  # this worker's part of the global batch
    if in_memory is not None:
        table = ray.get(in_memory)
        share = table.num_rows // context.get_world_size()
        table = table.slice(context.get_world_rank() * share, share)
        pixels = torch.from_numpy(unpack_images(table.column("image"), cfg.image_size, cfg.channels).copy())
        labels = torch.from_numpy(table.column("label").to_numpy()).to(torch.int64)
        yield from shuffled_batches(pixels.to(device), labels.to(device), batch, seed=cfg.seed)
        return
    shard = ray.train.get_dataset_shard("train")
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


def weight_spread(*modules: torch.nn.Module) -> float:
    """Across the workers, max minus min of a digest of ``modules``' weights: 0.0 while DDP keeps
    every replica in lockstep (logged as ``ddp/weight_spread`` at each checkpoint of a run with
    several workers). One all_reduce pair of a scalar: nothing next to a checkpoint."""
    digest = sum(p.detach().double().sum() * (i + 1) for m in modules for i, p in enumerate(m.parameters()))
    high, low = digest.clone().reshape(1), (-digest).reshape(1)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MAX)
    return float(high.item() + low.item())


def _all_finite(history: list[tuple[int, dict[str, float]]], device: torch.device) -> bool:
    ok = all(math.isfinite(v) for _, values in history for v in values.values())
    if dist.is_available() and dist.is_initialized():
        flag = torch.tensor([1.0 if ok else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = bool(flag.item() > 0)
    return ok


@contextlib.contextmanager
def flushed_on_error(client: BufferedMlflowClient | None, timeout: float = ERROR_FLUSH_TIMEOUT_S) -> Iterator[None]:
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


def run_worker(worker: WorkerConfig) -> None:
    """The training loop of one worker (`pipelines.train_hop.train_loop_per_worker` calls it), whose
    logging reaches MLflow even if it raises."""
    # Rank 0 logs through a queue drained by a background thread: training never waits on
    # MLflow, and a tracking-server outage is retried, warned about once, and recorded.
    client = BufferedMlflowClient(worker.tracking_uri) if ray.train.get_context().get_world_rank() == 0 else None
    with flushed_on_error(client):
        _train(worker, client)


@dataclass
class _State:
    """What a checkpoint holds, and what the loop trains."""

    generator: torch.nn.Module
    critic: torch.nn.Module
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    schedulers: tuple  # the optimizers' LambdaLRs, generator's first (wgan.step.build_schedulers)
    fixed_z: torch.Tensor
    start: int = 0
    payload: dict | None = None  # the restored checkpoint's, if any
    step: TrainStep | None = None  # the step being trained: its critic-update clock (--gp-every) is checkpointed


def _restore(cfg: TrainConfig, config: WorkerConfig, device: torch.device, precision_mode: str) -> _State:
    """Build the networks (identical on every rank) and load the checkpoint to go on from: this
    run's latest (a restarted worker group, --resume) or, for a PBT exploit, another trial's.

    The networks are built in the layout their precision runs fastest in (`wgan.precision.memory_format`:
    channels_last for bf16 on a CPU), from the start: the optimizers' state, the EMA copy and DDP's
    gradient buckets then follow it."""
    layout = precision.memory_format(precision.effective(precision_mode, device), device)
    torch.manual_seed(cfg.seed)
    generator = build_generator(cfg).to(device, memory_format=layout)
    critic = build_critic(cfg).to(device, memory_format=layout)
    g_opt, d_opt = build_optimizers(cfg, generator, critic)
    state = _State(generator, critic, g_opt, d_opt, build_schedulers(cfg, g_opt, d_opt),
                   fixed_z=torch.randn(GRID_SAMPLES, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed)))
    restored = ray.train.get_checkpoint()
    if restored is not None and datafs.name(restored.path) in config.skipped_checkpoints:
        # --resume found it unreadable and set it aside: go on from the newest that loads
        filesystem, path = datafs.resolve(config.fallback_checkpoint)
        restored = ray.train.Checkpoint(path, filesystem=filesystem)
    if restored is None and config.init_checkpoint:
        restored = ray.train.Checkpoint(config.init_checkpoint)
    if restored is None:
        return state
    with restored.as_directory() as directory:
        payload = ckpt.load(directory)
    for module, key in ((generator, "generator"), (critic, "critic"), (state.g_opt, "g_optimizer"),
                        (state.d_opt, "d_optimizer")):
        module.load_state_dict(payload[key])
    for optimizer in (state.g_opt, state.d_opt):  # a checkpoint of another layout (--precision changed on resume)
        state_in_layout(optimizer)
    # this run's learning rate (PBT perturbs it), not the saved one, where the schedule was
    ckpt.restore_schedulers(payload, *state.schedulers, lr=cfg.lr)
    state.fixed_z, state.start, state.payload = payload["fixed_z"], payload["step"], payload
    return state


class _RankZero:
    """Rank 0's duties: MLflow logging, progress, grids, the objective, the generator's moving
    average, the machine's system metrics, and checkpoints. Other ranks get `_OtherRank`, whose methods do what every rank
    must (report at the same steps, as Ray Train requires) and nothing else."""

    def __init__(self, client: BufferedMlflowClient, config: WorkerConfig, cfg: TrainConfig, settings: RunSettings,
                 state: _State, device: torch.device):
        self.client, self.run_id, self.cfg, self.settings = client, config.mlflow_run_id, cfg, settings
        self.state, self.device, self.progress = state, device, config.progress_queue
        # --g-ema: rank 0 keeps the moving average of the generator; it samples and is logged.
        self.ema = None
        if cfg.g_ema:
            self.ema = AveragedModel(state.generator, multi_avg_fn=get_ema_multi_avg_fn(cfg.g_ema), use_buffers=True)
            if state.payload and state.payload.get("generator_ema"):
                self.ema.load_state_dict(state.payload["generator_ema"])
        self.quality = (SampleQuality(config.objective, cfg.z_dim, cfg.num_classes, device)
                        if config.objective else None)
        # --eval-every: the same measure as tune's objective, with class coverage, on its own latents
        self.evaluation = (SampleQuality(config.evaluation, cfg.z_dim, cfg.num_classes, device)
                           if config.evaluation else None)
        # This machine's CPU, memory (and GPU) in the run, sampled by MLflow's monitor on a thread of its own.
        interval = config.system_metrics_interval_s
        self.system = SystemMetrics(self.run_id, config.tracking_uri, interval) if interval else None

    @property
    def sampler(self) -> torch.nn.Module:
        """What grids and the objective draw from: the moving average when kept, else the generator
        as trained now (the module inside DDP)."""
        return self.ema.module if self.ema is not None else unwrap(self.state.generator)

    def started(self, precision_used: str, world: int) -> None:
        self.client.set_tag(self.run_id, run_tags.PRECISION, precision_used)  # what "auto" became here
        # The shape it ran on from this step: a resumed run may go on with other workers.
        self.client.log_metric(self.run_id, "train/workers", world, step=self.state.start)
        if self.state.payload:  # visible in the run: where a restart (worker failure or --resume) picked up
            self.client.log_metric(self.run_id, "train/resumed_from_step", self.state.start, step=self.state.start)
        if self.system is not None:
            self.system.start()

    def stepped(self) -> None:
        if self.ema is not None:
            self.ema.update_parameters(unwrap(self.state.generator))

    def diverged(self, history: list[tuple[int, dict[str, float]]], step: int) -> None:
        """Tell the driver through the MLflow run, which outlives this worker group."""
        bad = next(((st, k) for st, vals in history for k, v in vals.items() if not math.isfinite(v)),
                   (step, "a value on another worker"))
        self.client.set_tag(self.run_id, run_tags.DIVERGED, f"{bad[1]} became non-finite at step {bad[0]}")
        self.finished()

    def log(self, history: list[tuple[int, dict[str, float]]], step: int, rate: float) -> None:
        history[-1][1]["throughput/images_per_s"] = rate
        self.client.log_batch(self.run_id, metrics=tracking.metrics_batch(history, int(time.time() * 1000)),
                              synchronous=False)
        if self.progress is not None:
            try:
                self.progress.put_nowait({"done": step, **history[-1][1]})
            except Exception:  # noqa: BLE001 - a full queue only drops a progress update
                pass

    def sample(self, step: int) -> None:
        self.sampler.eval()
        with torch.no_grad():
            z, labels, per_row = grid_latents(self.state.fixed_z, self.cfg.num_classes)
            pictures = to_uint8(self.sampler(z.to(self.device), None if labels is None else labels.to(self.device)))
        self.sampler.train()
        tracking.log_grid(self.client, self.run_id, grid(pictures, nrow=per_row), step)

    def evaluate(self, step: int) -> float:
        """--eval-every: score the sampler (the EMA generator when kept: the one logged), log the curve."""
        started = time.perf_counter()
        measured = self.evaluation.measure(self.sampler)
        measured[objective.EVAL_SECONDS] = time.perf_counter() - started
        self.client.log_batch(self.run_id, metrics=tracking.metrics_batch([(step, measured)], int(time.time() * 1000)),
                              synchronous=False)
        if self.progress is not None:
            try:
                self.progress.put_nowait({"note": f"step {step}: Frechet distance {measured[objective.EVAL_FD]:.3f}"})
            except Exception:  # noqa: BLE001 - a full queue only drops a progress note
                pass
        return measured[objective.EVAL_FD]

    def checkpoint(self, step: int, metrics: dict[str, float], evaluate: bool = False) -> None:
        if "ddp/weight_spread" in metrics:
            self.client.log_metric(self.run_id, "ddp/weight_spread", metrics["ddp/weight_spread"], step=step,
                                   synchronous=False)
        if self.evaluation is not None and evaluate:
            metrics[objective.EVAL_FD] = self.evaluate(step)
        if self.evaluation is not None:  # what Ray Train ranks checkpoints by: unevaluated ones last
            metrics[objective.RANK_SCORE] = metrics.get(objective.EVAL_FD, objective.UNSCORED)
        if self.quality is not None:
            metrics[objective.METRIC] = self.quality(self.sampler)
            self.client.log_metric(self.run_id, objective.METRIC, metrics[objective.METRIC], step=step,
                                   synchronous=False)
        # A restart resumes from this checkpoint and does not replay the steps before it: their
        # metrics and grids must be in MLflow before it is reported.
        self.client.sync(CHECKPOINT_SYNC_TIMEOUT_S)
        s = self.state
        with tempfile.TemporaryDirectory() as directory:
            state = ckpt.TrainingState(generator=unwrap(s.generator), critic=unwrap(s.critic), g_optimizer=s.g_opt,
                                       d_optimizer=s.d_opt, fixed_z=s.fixed_z, generator_ema=self.ema,
                                       g_scheduler=s.schedulers[0], d_scheduler=s.schedulers[1],
                                       critic_updates=s.step.critic_updates)
            ckpt.save(directory, state, step=step, cfg=self.cfg, mlflow_run_id=self.run_id)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=checkpoints.dir_name(step))

    def finished(self) -> None:
        if self.system is not None:
            self.system.stop()
        self.client.close()


class _OtherRank:
    """A rank other than 0: reports with rank 0, logs nothing, keeps no checkpoint."""

    def started(self, precision_used: str, world: int) -> None:
        pass

    def stepped(self) -> None:
        pass

    def diverged(self, history: list, step: int) -> None:
        pass

    def log(self, history: list, step: int, rate: float) -> None:
        pass

    def sample(self, step: int) -> None:
        pass

    def checkpoint(self, step: int, metrics: dict[str, float], evaluate: bool = False) -> None:
        ray.train.report(metrics)

    def finished(self) -> None:
        pass


def _train(config: WorkerConfig, client: BufferedMlflowClient | None) -> None:
    """The loop, in the phases of docs/architecture.md section 3: restore, build, then per step
    train; at intervals log (rank 0), sample, checkpoint and report."""
    cfg = TrainConfig.from_dict(config.train_config)
    settings = RunSettings.from_dict(config.run_settings)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    device = ray.train.torch.get_device()

    # --- Restore: networks (in their precision's layout), optimizers, step, fixed grid latents -----
    state = _restore(cfg, config, device, settings.precision)
    duties = _RankZero(client, config, cfg, settings, state, device) if rank == 0 else _OtherRank()
    # Different latents on each rank, reproducible per (seed, rank, step).
    torch.manual_seed(hash((cfg.seed, rank, state.start)) % 2**63)
    if state.payload and world == 1:
        ckpt.set_rng_state(state.payload["rng"])

    # --- Build: DDP wrappers and the step -------------------------------------------------------
    if settings.gpu and world > 1:
        # Batch statistics over the global batch, so N workers train like one with the whole batch.
        state.generator = torch.nn.SyncBatchNorm.convert_sync_batchnorm(state.generator)
        state.critic = torch.nn.SyncBatchNorm.convert_sync_batchnorm(state.critic)
    state.generator = ray.train.torch.prepare_model(state.generator)
    state.critic = ray.train.torch.prepare_model(state.critic)
    step_fn = TrainStep(cfg, state.generator, state.critic, state.g_opt, state.d_opt,
                        precision_mode=settings.precision, schedulers=state.schedulers)
    if state.payload is not None:  # the lazy penalty's clock goes on where the checkpoint left it
        step_fn.critic_updates = ckpt.critic_updates_of(state.payload)
    state.step = step_fn
    duties.started(step_fn.precision, world)
    data = real_batches(cfg, device, in_memory=config.in_memory)
    pending: list[tuple[int, dict[str, torch.Tensor], float]] = []
    images_per_step = cfg.n_critic * cfg.batch
    tick, tick_step = time.perf_counter(), state.start
    fail_at_step = config.fail_at_step  # the test hook, see the module docstring

    for step in range(state.start + 1, cfg.steps + 1):
        # --- Step: n_critic critic updates, one generator update ---------------------------------
        lr = state.g_opt.param_groups[0]["lr"]  # this step's (a float: no device transfer); logged as train/lr
        stats = step_fn(next(data) for _ in range(cfg.n_critic))
        duties.stepped()
        if step == fail_at_step:
            raise RuntimeError(f"injected fault at step {step} (WGANCTL_TEST_FAIL_AT_STEP)")
        pending.append((step, stats, lr))
        last = step == cfg.steps
        # --eval-every: an evaluation at every N-th step and the last, each with a checkpoint for Ray to rank
        evaluate_now = bool(settings.eval_every) and (last or step % settings.eval_every == 0)
        checkpoint_now = last or step % settings.checkpoint_every == 0 or evaluate_now
        if not (checkpoint_now or step % settings.log_every == 0):
            continue

        # --- Log (rank 0): the interval's statistics in one host sync -----------------------------
        keys = list(stats)
        values = torch.stack([torch.stack([s[k] for k in keys]) for _, s, _ in pending]).tolist()
        now = time.perf_counter()
        rate = images_per_step * (step - tick_step) / max(now - tick, 1e-9)
        tick, tick_step = now, step
        history = [(st, {**dict(zip(keys, row)), "train/lr": step_lr}) for (st, _, step_lr), row in zip(pending, values)]
        pending = []
        if step_fn.precision == "fp16":
            history = precision.without_skipped_steps(history)
        if not _all_finite(history, device):  # every rank stops here: they agreed through all_reduce
            duties.diverged(history, step)
            return
        duties.log(history, step, rate)

        # --- Sample: the progress grid --------------------------------------------------------------
        if last or step % settings.sample_every == 0:
            duties.sample(step)

        # --- Checkpoint and report: every rank reports at the same steps ----------------------------
        if checkpoint_now:
            metrics = {"step": step, **history[-1][1]}
            if world > 1:
                metrics["ddp/weight_spread"] = weight_spread(unwrap(state.generator), unwrap(state.critic))
            duties.checkpoint(step, metrics, evaluate=evaluate_now)
    duties.finished()
