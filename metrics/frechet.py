"""Frechet distance between Gaussians fitted to feature sets, and mergeable feature statistics.

FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), real part, in float64, as in
the pytorch-fid reference (eps * I is added to both covariances when sqrtm is
not finite). ``FeatureStats`` keeps (n, sum, sum of outer products), so
statistics gathered on several processes merge by addition. With fewer samples
than the feature dimension + 1 the covariance is singular and FD is unreliable:
a warning says so (report the sample count with every FD).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import linalg


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"sqrtm(S1 S2) is not finite; adding {eps} to the covariance diagonals", stacklevel=2)
        offset = np.eye(mu1.size) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag)) if covmean.size else 0.0
        if imag > 1e-3:
            warnings.warn(f"sqrtm(S1 S2) has an imaginary diagonal component up to {imag:.3g}; "
                          "keeping the real part (covariances are likely singular)", stacklevel=2)
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


class FeatureStats:
    """Running float64 statistics of feature vectors: count, sum and sum of outer products."""

    def __init__(self, dim: int) -> None:
        self.dim = int(dim)
        self.n = 0
        self.sum = np.zeros(self.dim, np.float64)
        self.outer = np.zeros((self.dim, self.dim), np.float64)

    def update(self, features: np.ndarray) -> None:
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features (N, {self.dim}), got {x.shape}")
        self.n += x.shape[0]
        self.sum += x.sum(axis=0)
        self.outer += x.T @ x

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another process's statistics into these (returns self)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dimension {other.dim} into {self.dim}")
        self.n += other.n
        self.sum += other.sum
        self.outer += other.outer
        return self

    def mean(self) -> np.ndarray:
        if self.n == 0:
            raise ValueError("no features accumulated")
        return self.sum / self.n

    def cov(self, ddof: int = 1) -> np.ndarray:
        """Covariance, unbiased (N - 1) by default; ddof=0 gives StyleGAN-V's biased estimate."""
        if self.n <= ddof:
            raise ValueError(f"need more than {ddof} feature vectors for a covariance, have {self.n}")
        if self.n < self.dim + 1:
            warnings.warn(f"only {self.n} feature vectors for dimension {self.dim}: the covariance is "
                          f"singular (needs >= {self.dim + 1}); Frechet distances from it are unreliable",
                          stacklevel=2)
        mu = self.mean()
        cov = (self.outer - self.n * np.outer(mu, mu)) / (self.n - ddof)
        return (cov + cov.T) / 2.0  # exactly symmetric, whatever the summation order

    def state(self) -> dict[str, Any]:
        return {"dim": self.dim, "n": self.n, "sum": self.sum.copy(), "outer": self.outer.copy()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeatureStats:
        stats = cls(int(state["dim"]))
        stats.n = int(state["n"])
        stats.sum = np.array(state["sum"], np.float64).reshape(stats.dim)
        stats.outer = np.array(state["outer"], np.float64).reshape(stats.dim, stats.dim)
        return stats


def frechet_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """FD between two feature sets' Gaussians (unbiased covariances)."""
    return frechet_distance(a.mean(), a.cov(), b.mean(), b.cov())
