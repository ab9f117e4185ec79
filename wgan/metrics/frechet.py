"""Frechet distance between Gaussians fitted to two feature sets (FID when the features are Inception's).

d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})   (Dowson & Landau 1982; used as
FID by Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium", Eq. 6).

The trace of the matrix square root is taken from a symmetric matrix: S1 S2 is similar to
S1^{1/2} S2 S1^{1/2}, which is symmetric positive semi-definite, so
Tr (S1 S2)^{1/2} = sum sqrt(eigvalsh(S1^{1/2} S2 S1^{1/2})). ``eigh`` on symmetric matrices
stays real and stable for rank-deficient covariances (fewer samples than dimensions), where
a general ``sqrtm`` of S1 S2 returns complex noise that pytorch-fid has to patch with an
``eps * I`` offset.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof=1, as pytorch-fid and torchmetrics) of ``(N, D)`` features, float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance_from_statistics(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr (S1 S2)^{1/2}; clipped at 0 against rounding."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"statistics disagree in shape: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    distance = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(distance, 0.0))


def frechet_distance(features1: ArrayLike, features2: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to two ``(N, D)`` feature sets."""
    return frechet_distance_from_statistics(*feature_statistics(features1), *feature_statistics(features2))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance; eigenvalues below zero (rounding) count as zero."""
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
