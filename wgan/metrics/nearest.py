"""Nearest neighbours in feature space, exact and chunked so 10^4 x 10^5 distance tables never sit in memory.

Used for the memorisation check (each sample beside its closest training images: a
generator that copies shows near-duplicates) and for the k-NN radii of improved
precision and recall.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from numpy.typing import ArrayLike

CHUNK_ROWS = 1024  # query rows per distance block: 1024 x 10^5 float64 = 0.8 GB at most


def as_float64_tensor(features: ArrayLike) -> torch.Tensor:
    """(N, D) features as a float64 CPU tensor: distances of near-identical rows need the precision."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(x.shape)}")
    return x


def distance_blocks(queries: torch.Tensor, reference: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(start row, Euclidean distances of queries[start:start+CHUNK_ROWS] to every reference row)."""
    for start in range(0, len(queries), CHUNK_ROWS):
        yield start, torch.cdist(queries[start:start + CHUNK_ROWS], reference)


def nearest_neighbours(queries: ArrayLike, reference: ArrayLike, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices ``(N, k)`` of the ``k`` reference rows closest to each query row, closest first."""
    q, r = as_float64_tensor(queries), as_float64_tensor(reference)
    if k > len(r):
        raise ValueError(f"asked for {k} neighbours among {len(r)} reference rows")
    distances, indices = np.empty((len(q), k)), np.empty((len(q), k), dtype=np.int64)
    for start, block in distance_blocks(q, r):
        nearest = torch.topk(block, k, dim=1, largest=False, sorted=True)
        distances[start:start + len(block)] = nearest.values.numpy()
        indices[start:start + len(block)] = nearest.indices.numpy()
    return distances, indices
