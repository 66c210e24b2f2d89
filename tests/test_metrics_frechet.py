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
