"""Sample-quality metrics: plain functions of sample features and reference features.

Each module holds one metric and cites where its formula comes from. Inputs are
``(N, D)`` numpy arrays or CPU torch tensors; nothing here knows which network
produced the features (the project classifier, Inception, ...).
"""

from wgan.metrics.coverage import ClassCoverage, class_coverage
from wgan.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_from_statistics
from wgan.metrics.inception_score import inception_score
from wgan.metrics.kernel import kernel_inception_distance
from wgan.metrics.nearest import nearest_neighbours
from wgan.metrics.precision_recall import precision_recall

__all__ = [
    "ClassCoverage", "class_coverage", "feature_statistics", "frechet_distance",
    "frechet_distance_from_statistics", "inception_score", "kernel_inception_distance",
    "nearest_neighbours", "precision_recall",
]
