"""Improved precision and recall with k-nearest-neighbour manifolds.

Kynkäänniemi, Karras, Laine, Lehtinen, Aila 2019, "Improved Precision and Recall Metric
for Assessing Generative Models", Sec. 2 and Eq. 1-2: each set's manifold is the union of
balls around its points with radius the distance to the point's k-th nearest neighbour
in the same set (k = 3 in the paper). Precision is the share of generated samples inside
the real manifold (quality); recall is the share of real samples inside the generated
manifold (diversity). The paper uses equally sized sets (50k each).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike

from wgan.metrics.nearest import as_float64_tensor, distance_blocks, nearest_neighbours

K = 3


def precision_recall(sample_features: ArrayLike, reference_features: ArrayLike, k: int = K) -> tuple[float, float]:
    """(precision, recall) of samples against a reference set, both in [0, 1]."""
    samples, reference = as_float64_tensor(sample_features), as_float64_tensor(reference_features)
    if min(len(samples), len(reference)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} rows in each set")
    precision = _share_inside(samples, reference, _kth_neighbour_radii(reference, k))
    recall = _share_inside(reference, samples, _kth_neighbour_radii(samples, k))
    return precision, recall


def _kth_neighbour_radii(points: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point (its own zero distance is neighbour 0)."""
    distances, _ = nearest_neighbours(points, points, k + 1)
    return torch.from_numpy(distances[:, k])


def _share_inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of query rows within radius of at least one centre."""
    inside = np.concatenate([(block <= radii).any(dim=1).numpy() for _, block in distance_blocks(queries, centres)])
    return float(inside.mean())
