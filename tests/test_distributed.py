"""Data-parallel training on Ray Train: two CPU workers must stay in lockstep.

The real two-worker `wganctl train` run, with its workers on two nodes, is in test_cluster.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray.data
import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer

from pipelines.train import training_dataset
from pipelines.train_worker import real_batches
from wgan.config import TrainConfig
from wgan.data.manifest import load_manifest, shard_paths
from wgan.networks import build_critic, build_generator
from wgan.step import TrainStep, build_optimizers, unwrap


def _digest(module: torch.nn.Module) -> list[float]:
    """Two numbers per weight tensor that change with any weight: the sum and a position-weighted sum.

    Parameters only: batch-norm running statistics are per-rank buffers that DDP
    overwrites with rank 0's at every forward (SyncBatchNorm is GPU-only).
    """
    out = []
    for t in module.parameters():
        flat = t.detach().double().flatten()
        out += [flat.sum().item(), (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64)).sum().item()]
    return out


def _lockstep_loop(config: dict) -> None:
    cfg = TrainConfig.from_dict(config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(cfg.seed)
    G, D = build_generator(cfg), build_critic(cfg)
    g_opt, d_opt = build_optimizers(cfg, G, D)
    torch.manual_seed(100 + rank)  # different latents per rank, as in the real loop
    G, D = ray.train.torch.prepare_model(G), ray.train.torch.prepare_model(D)
    step = TrainStep(cfg, G, D, g_opt, d_opt)
    forwards: list[int] = []  # the critic's forwards in a step, by batch size: a penalty adds one
    unwrap(D).register_forward_hook(lambda module, args, out: forwards.append(args[0].shape[0]))
    data = real_batches(cfg, torch.device("cpu"), in_memory=config["in_memory"])
    records = []
    for i in range(cfg.steps):
        batches = [next(data) for _ in range(cfg.n_critic)]
        forwards.clear()
        step(iter(batches))
        records.append({"step": i + 1, "first_image_sum": batches[0][0].sum().item(), "forwards": list(forwards),
                        "critic_updates": step.critic_updates,
                        "generator": _digest(unwrap(G)), "critic": _digest(unwrap(D))})
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(records))
    ray.train.report({"done": 1})


@pytest.mark.parametrize("in_memory", [False, True], ids=["streamed", "held"])
def test_two_workers_hold_identical_weights_after_every_step(in_memory, tiny_dataset, ray_session, tmp_path):
    """Both data paths: streamed from Ray Data (large datasets), and each worker's shard held whole (small)."""
    manifest = load_manifest(tiny_dataset)
    # DiffAugment on: each worker draws its own augmentations of its own shard, and the averaged
    # gradients must still keep the replicas equal. The lazy penalty (--gp-every 4) too: every
    # worker takes it on the same critic updates, 0, 4, 8 and 12 of the 15 (3 steps of n_critic 5).
    cfg = TrainConfig(loss="wgan-gp", steps=3, width=8, z_dim=16, batch=32, augment="diffaug", gp_every=4,
                      image_size=28, channels=1).resolved()
    held = ray.put(training_dataset(tiny_dataset, manifest)) if in_memory else None  # the small-data path
    trainer = TorchTrainer(
        _lockstep_loop,
        train_loop_config={"cfg": cfg.to_dict(), "out": str(tmp_path), "in_memory": held},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path / "ray")),
        datasets=None if in_memory else {"train": ray.data.read_parquet(shard_paths(tiny_dataset, manifest))},
    )
    trainer.fit()
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert len(rank0) == len(rank1) == 3
    for a, b in zip(rank0, rank1):
        assert a["first_image_sum"] != b["first_image_sum"]  # each worker trains on its own data
        assert a["generator"] == b["generator"], f"generators differ after step {a['step']}"
        assert a["critic"] == b["critic"], f"critics differ after step {a['step']}"
        assert a["forwards"] == b["forwards"], f"the ranks took the penalty on different updates at step {a['step']}"
    # 5 joint forwards and the generator update's a step, and the penalty's on updates 0 and 4 | 8 | 12
    assert [len(r["forwards"]) for r in rank0] == [8, 7, 7]
    assert [r["critic_updates"] for r in rank0] == [5, 10, 15]
    assert rank0[0]["critic"] != rank0[-1]["critic"]  # and the weights did move
