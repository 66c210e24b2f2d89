"""Frechet distance and mergeable feature statistics."""

import warnings

import numpy as np
import pytest

from metrics.frechet import FeatureStats, frechet_distance, frechet_from_stats


def _features(n=200, d=6, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ mix + shift


def test_identical_sets_have_zero_distance():
    x = _features()
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_equal_covariances_leave_the_squared_mean_difference():
    x = _features()
    sigma = np.cov(x, rowvar=False)
    mu1, mu2 = np.zeros(6), np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0])
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(1 + 4 + 0.25 + 9 + 1, rel=1e-9)


def test_one_dimensional_gaussians():
    # FD between N(m1, a^2) and N(m2, b^2) is (m1 - m2)^2 + (a - b)^2.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0, rel=1e-12)


def test_feature_stats_merge_of_halves_equals_whole():
    x = _features(n=101, seed=1, shift=5.0)
    whole, a, b = FeatureStats(6), FeatureStats(6), FeatureStats(6)
    whole.update(x)
    a.update(x[:40])
    b.update(x[40:])
    merged = FeatureStats.from_state(a.state()).merge(FeatureStats.from_state(b.state()))
    assert merged.n == whole.n == 101
    np.testing.assert_allclose(merged.mean(), whole.mean(), rtol=1e-12)
    np.testing.assert_allclose(merged.cov(), whole.cov(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(whole.mean(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(whole.cov(), np.cov(x, rowvar=False), rtol=1e-9)  # unbiased, N - 1


def test_distance_from_stats_matches_direct_computation():
    x, y = _features(seed=2), _features(seed=3, shift=0.5)
    sx, sy = FeatureStats(6), FeatureStats(6)
    sx.update(x)
    sy.update(y)
    direct = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert frechet_from_stats(sx, sy) == pytest.approx(direct, rel=1e-8)


def test_singular_covariance_warns():
    stats = FeatureStats(10)
    stats.update(_features(n=5, d=10))
    with pytest.warns(UserWarning, match="singular"):
        stats.cov()
    big = FeatureStats(10)
    big.update(_features(n=11, d=10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big.cov()


def _scipy_reference(mu1, sigma1, mu2, sigma2):
    """The pytorch-fid formula: the general matrix square root of the product."""
    from scipy import linalg

    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1 + sigma2) - 2.0 * np.trace(linalg.sqrtm(sigma1 @ sigma2).real))


def test_full_rank_distance_equals_the_pytorch_fid_formula():
    x, y = _features(n=300, d=8, seed=4), _features(n=300, d=8, seed=5, shift=0.3)
    args = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert frechet_distance(*args) == pytest.approx(_scipy_reference(*args), rel=1e-10)


def test_singular_covariance_distance_is_stable_to_rounding_and_symmetric():
    # 4 samples in 32 dimensions (the smoke run's FVD): sqrtm of the non-symmetric product turns the
    # zero eigenvalues' rounding noise (~eps) into ~1e-8 relative changes of FD; the symmetric
    # eigenproblem with a rank tolerance keeps them at rounding level.
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(4, 32)) * 3 + 1, rng.normal(size=(512, 32)) * 3
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    fd = frechet_distance(mu1, s1, mu2, s2)
    assert fd == pytest.approx(_scipy_reference(mu1, s1, mu2, s2), rel=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(fd, rel=1e-13)
    for _ in range(10):
        noise = 1 + rng.normal(size=s1.shape) * 1e-15
        assert frechet_distance(mu1, s1 * (noise + noise.T) / 2, mu2, s2) == pytest.approx(fd, rel=1e-12)


def test_non_finite_covariance_is_undefined_and_says_so():
    sigma = np.eye(3)
    sigma[0, 1] = np.nan
    with pytest.warns(UserWarning, match="non-finite"):
        assert np.isnan(frechet_distance(np.zeros(3), sigma, np.zeros(3), np.eye(3)))
