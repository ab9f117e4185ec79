"""Inception Score from a classifier's class probabilities.

IS = exp(E_x KL(p(y|x) || p(y)))  (Salimans et al. 2016, "Improved Techniques for Training
GANs", Sec. 4), with p(y) the mean prediction over the split; reported as the mean and
standard deviation over ``splits`` consecutive splits, 10 in their code. It runs from 1
(every sample predicted alike) to K (confident predictions spread evenly over K classes).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

SPLITS = 10


def inception_score(probabilities: ArrayLike, splits: int = SPLITS) -> tuple[float, float]:
    """Mean and standard deviation over splits of exp(E KL(p(y|x) || p(y))) for ``(N, K)`` probabilities."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or len(p) < splits:
        raise ValueError(f"probabilities must be (N >= splits, K), got shape {p.shape} with {splits} splits")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (_safe_log(part) - _safe_log(marginal)), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _safe_log(p: np.ndarray) -> np.ndarray:
    """log p with log 0 = 0: the 0 log 0 terms of the KL sum vanish."""
    return np.log(np.where(p > 0, p, 1.0))
