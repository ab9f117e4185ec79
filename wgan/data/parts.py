"""The unit of work of `prepare`: parts of a source (one per split) and the shard plan over them.

A part is a picklable, index-addressable list of rows (``ArrayPart``: decoded
arrays of a torchvision dataset; ``imagefolder.FilePart``: image files). The driver selects rows and
cuts the parts into shards; workers call ``encode`` on their range. Everything
here depends only on the parameters, never on the cluster, so output is
deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
from wgan.data.images import fit_array

SHARD_TARGET_BYTES = 64 << 20
MIN_ROWS_PER_SHARD = 256
SHARDS_PER_DATASET = 16  # enough shards for parallel encoding and shuffled reading


@dataclass(frozen=True)
class EncodedRows:
    """Rows of a shard, fitted to size/channels, and the files that could not be read."""

    images: np.ndarray  # (n, size, size, channels) uint8
    labels: np.ndarray  # (n,) int64
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


@dataclass(frozen=True)
class ArrayPart:
    """One split of an in-memory dataset: (N, H, W, C) uint8 images and int64 labels."""

    split: str
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "ArrayPart":
        return replace(self, images=self.images[indices], labels=self.labels[indices])

    def encode(self, start: int, stop: int, size: int, channels: int) -> EncodedRows:
        images = [fit_array(self.images[i], size, channels) for i in range(start, stop)]
        return EncodedRows(np.stack(images), self.labels[start:stop])


class Part(Protocol):
    """Index-addressable rows of one split that a worker can encode."""

    split: str

    def __len__(self) -> int: ...

    def subset(self, indices: np.ndarray) -> "Part": ...

    def encode(self, start: int, stop: int, size: int, channels: int) -> EncodedRows: ...


@dataclass(frozen=True)
class LoadedSource:
    """A source ready to prepare: its parts (one per split, in output order), class names, where it was read from."""

    parts: list[Part]
    class_names: list[str]
    origin: str


@dataclass(frozen=True)
class ShardPlan:
    """Rows [start, stop) of parts[part] become shard number ``shard``."""

    shard: int
    part: int
    start: int
    stop: int


def select_rows(parts: list[Part], limit: int | None, seed: int) -> list[Part]:
    """A uniform random subset of ``limit`` rows over all parts (numpy default_rng(seed)), in source order."""
    total = sum(len(part) for part in parts)
    if limit is None or limit >= total:
        return parts
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=limit, replace=False))
    selected, first = [], 0
    for part in parts:
        mine = chosen[(chosen >= first) & (chosen < first + len(part))] - first
        if len(mine):
            selected.append(part.subset(mine))
        first += len(part)
    return selected


def rows_per_shard_for(count: int, row_bytes: int) -> int:
    """Default shard size: about SHARDS_PER_DATASET shards, at least MIN_ROWS_PER_SHARD rows, at most ~64 MiB."""
    by_count = max(MIN_ROWS_PER_SHARD, math.ceil(count / SHARDS_PER_DATASET))
    return max(1, min(by_count, SHARD_TARGET_BYTES // row_bytes))


def plan_shards(parts: list[Part], rows_per_shard: int) -> list[ShardPlan]:
    """Consecutive ranges of ``rows_per_shard`` rows; a shard never spans two splits."""
    plans: list[ShardPlan] = []
    for part_index, part in enumerate(parts):
        for start in range(0, len(part), rows_per_shard):
            plans.append(ShardPlan(len(plans), part_index, start, min(start + rows_per_shard, len(part))))
    return plans
