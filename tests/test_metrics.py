"""Sample-quality metrics against closed forms, known extremes and torchmetrics' implementation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from wgan.metrics import (class_coverage, feature_statistics, frechet_distance, frechet_distance_from_statistics,
                          inception_score, kernel_inception_distance, nearest_neighbours, precision_recall)
from wgan.metrics.kernel import polynomial_kernel, unbiased_mmd2


def gaussian(n: int, d: int, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)) + shift


class Passthrough(nn.Module):
    """A torchmetrics "feature extractor" that hands back the features it is given."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# --- Frechet distance -------------------------------------------------------------------------------------------

def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = gaussian(500, 16) @ np.random.default_rng(1).standard_normal((16, 16))  # correlated features
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_diagonal_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    var1, var2 = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    # diagonal covariances commute: (S1 S2)^{1/2} is the elementwise sqrt(var1 var2)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    assert frechet_distance_from_statistics(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_full_covariances_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)  # non-commuting, well conditioned
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance_from_statistics(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_samples_approaches_the_population_value():
    x, y = gaussian(20000, 4, seed=1), gaussian(20000, 4, shift=1.0, seed=2) * 2.0
    # N(0, I) vs N(2, 4I) in 4 dims: 4 * 2^2 + 4 * (1 + 4 - 2 * 2) = 20
    assert frechet_distance(x, y) == pytest.approx(20.0, rel=0.03)


def test_frechet_distance_stays_real_when_covariances_are_rank_deficient():
    x, y = gaussian(20, 64, seed=1), gaussian(20, 64, shift=0.5, seed=2)  # fewer samples than dimensions
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert np.isfinite(frechet_distance(x, y)) and frechet_distance(x, y) > 0


def test_frechet_distance_agrees_with_torchmetrics_on_the_same_features():
    x = gaussian(400, 32, seed=1)
    y = gaussian(300, 32, shift=0.3, seed=2) @ np.random.default_rng(3).uniform(0.5, 1.5, (32, 32)) / 4
    reference = FrechetInceptionDistance(feature=Passthrough(32))
    reference.update(torch.from_numpy(x), real=True)
    reference.update(torch.from_numpy(y), real=False)
    assert frechet_distance(y, x) == pytest.approx(float(reference.compute()), rel=1e-3)


def test_feature_statistics_are_mean_and_unbiased_covariance():
    x = gaussian(50, 3)
    mu, sigma = feature_statistics(torch.from_numpy(x))  # torch tensors are accepted too
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, (x - x.mean(0)).T @ (x - x.mean(0)) / 49)


# --- KID ----------------------------------------------------------------------------------------------------------

def biased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The V-statistic, diagonal terms k(x_i, x_i) included: positive in expectation even for one distribution."""
    return float(polynomial_kernel(x, x).mean() + polynomial_kernel(y, y).mean() - 2 * polynomial_kernel(x, y).mean())


def test_unbiased_mmd2_averages_to_zero_over_pairs_from_one_distribution():
    pairs = [(gaussian(20, 8, seed=2 * i), gaussian(20, 8, seed=2 * i + 1)) for i in range(300)]
    values = [unbiased_mmd2(x, y) for x, y in pairs]
    standard_error = np.std(values) / np.sqrt(len(values))
    assert abs(np.mean(values)) < 3 * standard_error
    # the biased estimate of the same pairs sits clearly above zero, so this test tells the two apart
    assert np.mean([biased_mmd2(x, y) for x, y in pairs]) > 10 * standard_error


def test_kid_is_near_zero_for_one_distribution_and_clearly_positive_for_shifted_ones():
    x, same, shifted = gaussian(2000, 16, seed=1), gaussian(2000, 16, seed=2), gaussian(2000, 16, shift=0.5, seed=3)
    mean, std = kernel_inception_distance(x, same, subsets=50, subset_size=500)
    assert abs(mean) < 3 * std
    shifted_mean, shifted_std = kernel_inception_distance(x, shifted, subsets=50, subset_size=500)
    assert shifted_mean > 10 * shifted_std and shifted_mean > 100 * abs(mean)


def test_kid_agrees_with_torchmetrics_on_one_subset_of_all_rows():
    x, y = gaussian(200, 16, seed=1), gaussian(200, 16, shift=0.2, seed=2)
    reference = KernelInceptionDistance(feature=Passthrough(16), subsets=1, subset_size=200)
    reference.update(torch.from_numpy(x), real=True)
    reference.update(torch.from_numpy(y), real=False)
    # one subset of all rows is a permutation of them, and MMD^2_u does not depend on row order
    mean, std = kernel_inception_distance(y, x, subsets=1, subset_size=200)
    assert mean == pytest.approx(float(reference.compute()[0]), rel=1e-6) and std == 0.0


# --- Inception score ----------------------------------------------------------------------------------------------

def test_inception_score_is_one_for_identical_predictions():
    probabilities = np.tile(np.random.default_rng(0).dirichlet(np.ones(10)), (100, 1))
    assert inception_score(probabilities) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_inception_score_is_k_for_confident_balanced_predictions():
    probabilities = np.eye(10)[np.arange(500) % 10]  # each split of 50 holds every class 5 times
    assert inception_score(probabilities) == pytest.approx((10.0, 0.0), abs=1e-9)


def test_inception_score_agrees_with_torchmetrics_in_one_split():
    logits = torch.randn(300, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    reference = InceptionScore(feature=Passthrough(10), splits=1)
    reference.update(logits)
    assert inception_score(logits.softmax(1), splits=1)[0] == pytest.approx(float(reference.compute()[0]), rel=1e-6)


# --- precision and recall -----------------------------------------------------------------------------------------

def test_precision_and_recall_are_one_for_identical_sets():
    x = gaussian(300, 8)
    assert precision_recall(x, x.copy()) == (1.0, 1.0)


def test_precision_and_recall_fall_as_the_sets_separate():
    reference = gaussian(500, 8, seed=1)
    scores = [precision_recall(gaussian(500, 8, shift=shift, seed=2), reference) for shift in (0, 0.25, 0.5, 1, 2)]
    precisions, recalls = zip(*scores)
    assert all(a > b for a, b in zip(precisions, precisions[1:])), precisions
    assert all(a > b for a, b in zip(recalls, recalls[1:])), recalls
    assert min(precisions[0], recalls[0]) > 0.6 and max(precisions[-1], recalls[-1]) < 0.05


def test_mode_collapse_keeps_precision_and_loses_recall():
    reference = gaussian(1000, 4, seed=1)
    collapsed = reference[np.argsort(reference[:, 0])[:50]].repeat(10, axis=0)  # one corner of the data, repeated
    precision, recall = precision_recall(collapsed, reference)
    assert precision == 1.0 and recall < 0.2


# --- coverage and nearest neighbours ------------------------------------------------------------------------------

def test_class_coverage_counts_classes_with_half_their_fair_share():
    # 4 classes: fair share 1/4, covered from 1/8 = 12.5 of 100 samples
    labels = np.repeat([0, 1, 2, 3], [60, 27, 13, 0])
    coverage = class_coverage(labels, 4)
    assert coverage.counts.tolist() == [60, 27, 13, 0]
    np.testing.assert_allclose(coverage.shares, [0.6, 0.27, 0.13, 0.0])
    assert coverage.covered == 3 and coverage.num_classes == 4
    assert class_coverage(np.repeat([0, 1, 2, 3], [61, 27, 12, 0]), 4).covered == 2
    with pytest.raises(ValueError):
        class_coverage(np.array([0, 4]), 4)


def test_nearest_neighbours_finds_copies_and_orders_by_distance():
    reference = gaussian(3000, 8, seed=1)  # more rows than one distance block
    queries = np.concatenate([reference[[5, 2500]], reference[[7]] + 1e-3])
    distances, indices = nearest_neighbours(queries, reference, k=2)
    assert indices[:, 0].tolist() == [5, 2500, 7]
    np.testing.assert_allclose(distances[:2, 0], 0.0, atol=1e-6)  # cdist's matrix-product form, in float64
    assert distances[2, 0] == pytest.approx(1e-3 * np.sqrt(8), rel=1e-4)
    assert np.all(distances[:, 1] > distances[:, 0])
