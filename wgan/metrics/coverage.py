"""Class coverage of generated samples, from a classifier's predicted labels.

A mode-collapsed generator concentrates its samples on a few classes. With K classes a
fair share is 1/K; a class counts as covered when it receives at least half of that,
1/(2K) (a tolerance for datasets that are themselves slightly unbalanced, and for the
sampling noise of a few thousand samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class ClassCoverage:
    counts: np.ndarray  # (K,) samples predicted as each class
    shares: np.ndarray  # (K,) counts / N
    covered: int  # classes with share >= 1 / (2K)

    @property
    def num_classes(self) -> int:
        return len(self.counts)


def class_coverage(predicted_labels: ArrayLike, num_classes: int) -> ClassCoverage:
    """Per-class counts and shares of ``predicted_labels`` (ints in [0, num_classes)) and the covered class count."""
    labels = np.asarray(predicted_labels).reshape(-1)
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"predicted labels must be a non-empty set of ints in [0, {num_classes})")
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes)
    shares = counts / len(labels)
    return ClassCoverage(counts=counts, shares=shares, covered=int(np.sum(shares >= 1.0 / (2 * num_classes))))
