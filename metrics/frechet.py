"""Frechet distance between Gaussians fitted to feature sets, and mergeable feature statistics.

FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) in float64, the formula of the
pytorch-fid reference. The trace of the square root is computed from symmetric
eigenproblems, Tr sqrtm(S1 S2) = sum_i sqrt(lambda_i(S1^1/2 S2 S1^1/2)), with
eigenvalues under the numerical-rank tolerance (d * eps * lambda_max, as
``numpy.linalg.matrix_rank``) set to zero. The reference's general ``sqrtm`` of
the non-symmetric product is equal in exact arithmetic, but when a covariance is
singular (fewer samples than dimensions) its zero eigenvalues come out as
rounding noise of size eps * lambda_max and enter through their square root:
FD then moves by ~1e-8 relative between machines whose LAPACK kernels round
differently. Here it moves by ~1e-15, and FD(a, b) = FD(b, a) to rounding.

``FeatureStats`` keeps (n, sum, sum of outer products), so statistics gathered
on several processes merge by addition. With fewer samples than the feature
dimension + 1 the covariance is singular and FD is unreliable: a warning says so
(report the sample count with every FD).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def _psd_eigenvalues(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and vectors of a symmetric PSD matrix, those under the numerical-rank tolerance set to 0."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    tol = matrix.shape[0] * np.finfo(np.float64).eps * max(float(values.max(initial=0.0)), 0.0)
    return np.where(values > tol, values, 0.0), vectors


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr sqrtm(S1 S2) for covariances S1, S2, through the symmetric matrix S1^1/2 S2 S1^1/2."""
    values, vectors = _psd_eigenvalues(sigma1)
    root1 = (vectors * np.sqrt(values)) @ vectors.T
    inner, _ = _psd_eigenvalues(root1 @ sigma2 @ root1)
    return float(np.sqrt(inner).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    if not (np.isfinite(sigma1).all() and np.isfinite(sigma2).all()):
        warnings.warn("a covariance has non-finite entries (NaN or inf features): FD is undefined (NaN)",
                      stacklevel=2)
        return float("nan")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


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


def frechet_from_stats(a: FeatureStats, b: FeatureStats, ddof: int = 1) -> float:
    """FD between two feature sets' Gaussians: unbiased covariances (N - 1) by default, ``ddof=0`` the biased
    ones (N) of StyleGAN-V and cd-fvd; the caller's protocol chooses."""
    return frechet_distance(a.mean(), a.cov(ddof), b.mean(), b.cov(ddof))
