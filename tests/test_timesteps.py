"""Diffusion-APO's trajectory-aware timestep sampler and the high/low sliding window."""

import pytest
import torch

from harness.sampling import SamplerConfig
from trainers.timesteps import TimestepSamplerConfig, TrajectoryTimesteps


def _ts(**kw) -> TrajectoryTimesteps:
    return TrajectoryTimesteps(TimestepSamplerConfig(**kw), SamplerConfig(num_steps=16))


def test_anchors_follow_eq5_on_the_inference_schedule():
    ts = _ts()
    for s in (3.0, 6.0):
        sigma = 1 - torch.arange(16, dtype=torch.float64) / 16  # the unshifted Euler grid
        expected = torch.round(s * sigma / (1 + (s - 1) * sigma) * 1000).long()
        assert ts.anchors(s).tolist() == expected.tolist()


def test_without_offset_every_draw_is_an_anchor_of_a_shift_in_the_set():
    ts = _ts(random_offset=False)
    draws = ts.sample(400, torch.Generator().manual_seed(0))
    anchors = {int(t) for s in (3, 4, 5, 6) for t in ts.anchors(s)}
    assert set(draws.tolist()) <= anchors
    # every shift is used: some draws are anchors of only one shift
    only = {s: {int(t) for t in ts.anchors(s)} - (anchors - {int(t) for t in ts.anchors(s)}) for s in (3, 6)}
    assert all(set(draws.tolist()) & only[s] for s in only)


def test_random_shift_concentrates_draws_at_high_noise():
    g = torch.Generator().manual_seed(1)
    shifted = _ts(random_offset=False).sample(2000, g).double().mean()
    plain = _ts(random_offset=False, random_shift=False).sample(2000, g).double().mean()
    assert plain == pytest.approx(531, abs=25)  # mean of the 16 unshifted anchors: 531.25
    assert shifted > plain + 150


def test_offset_is_snapped_to_valid_steps_and_clipped():
    ts = _ts(offset_scale=40.0)
    draws = ts.sample(500, torch.Generator().manual_seed(2))
    assert set(draws.tolist()) <= set(ts.valid_steps.tolist())
    assert draws.max() <= 1000 and draws.min() >= 0
    ints = _ts(offset_scale=40.0, snap="integer").sample(500, torch.Generator().manual_seed(2))
    assert not set(ints.tolist()) <= set(ts.valid_steps.tolist())  # the offset moves draws off the grid
    assert ints.max() <= 1000


def test_offset_std_versus_variance():
    g = torch.Generator().manual_seed(3)
    std = _ts(snap="integer", offset_scale=16.0, random_shift=False).sample(3000, g)
    var = _ts(snap="integer", offset_scale=16.0, offset_is_variance=True, random_shift=False).sample(3000, g)
    anchors = _ts(random_shift=False).anchors(1.0)

    def spread(x):
        return (x[:, None] - anchors[None]).abs().min(dim=1).values.double().mean()

    # std 16 vs std 4 (anchors 62 apart, so a draw rarely lands nearer another anchor)
    assert spread(std) == pytest.approx(16 * 0.798, rel=0.15) and spread(var) == pytest.approx(4 * 0.798, rel=0.2)


def test_window_has_four_high_and_one_low():
    ts = _ts()
    g = torch.Generator().manual_seed(4)
    for _ in range(50):
        w = ts.window(g)
        assert len(w) == 5 and (w[:4] >= 800).all() and (w[4:] < 800).all()
    assert len(TrajectoryTimesteps(TimestepSamplerConfig(n_high=2, n_low=3), SamplerConfig()).window(g)) == 5


def test_explicit_few_step_schedule_is_refused():
    with pytest.raises(ValueError, match="shifted schedule"):
        TrajectoryTimesteps(TimestepSamplerConfig(), SamplerConfig(timesteps=[1000, 757, 522]))


def test_stride_carries_a_high_timestep_and_draws_the_low_one_afresh():
    ts = _ts(stride=4)
    g = torch.Generator().manual_seed(5)
    prev = ts.window(g)
    lows = []
    for _ in range(40):
        w = ts.window(g, prev)
        assert len(w) == 5 and (w[:4] >= 800).all() and (w[4:] < 800).all()
        assert int(w[0]) == int(prev[3])  # window 5, stride 4: the previous window's last high draw carries over
        lows.append(int(w[4]))
        prev = w
    assert len(set(lows)) >= 10  # 40 windows: the low timestep is redrawn every time (it was one value)
    assert TimestepSamplerConfig().stride == 4  # the paper's default
    fresh = _ts(stride=None)  # no stride: windows are drawn afresh
    assert len(fresh.window(g, prev)) == 5
    with pytest.raises(ValueError, match="n_low"):
        TimestepSamplerConfig(n_high=2, n_low=3, stride=2)


def _exact_pmf(regime: str) -> dict[int, float]:
    """Without offsets: a shift drawn uniformly from {3, 4, 5, 6}, then one of its Eq. 5 anchors
    in the regime, uniformly (derived here from the formula, not from the sampler)."""
    pmf: dict[int, float] = {}
    for s in (3.0, 4.0, 5.0, 6.0):
        steps = []
        for k in range(16):
            sigma = 1 - k / 16
            t = round(s * sigma / (1 + (s - 1) * sigma) * 1000)
            if (t >= 800) == (regime == "high"):
                steps.append(t)
        for t in steps:
            pmf[t] = pmf.get(t, 0.0) + 0.25 / len(steps)
    return pmf


def _chi2_pvalue(draws: list[int], pmf: dict[int, float]) -> float:
    from scipy.stats import chisquare

    assert set(draws) <= set(pmf)
    keys = sorted(pmf)
    observed = [draws.count(k) for k in keys]
    expected = [pmf[k] * len(draws) for k in keys]
    return float(chisquare(observed, expected).pvalue)


def test_sliding_windows_draw_from_the_samplers_distribution():
    """Over many consecutive stride-4 windows the low timestep (and every high position) has the
    sampler's regime distribution: a chi-square test against the exact snapped distribution."""
    ts = _ts(stride=4, random_offset=False)
    g = torch.Generator().manual_seed(11)
    prev, lows, highs = None, [], []
    for _ in range(1500):
        prev = ts.window(g, prev)
        lows.append(int(prev[4]))
        highs += [int(t) for t in prev[:4]]
    low_pmf = _exact_pmf("low")
    assert len(set(lows)) == len(low_pmf)  # every low anchor of every shift turns up
    assert _chi2_pvalue(lows, low_pmf) > 1e-3
    assert _chi2_pvalue(highs, _exact_pmf("high")) > 1e-3  # a carried timestep is not a biased one


def test_sliding_windows_with_offsets_keep_the_low_distribution():
    """With the random offset, the windows' low timesteps match fresh draws of the low regime."""
    ts = _ts(stride=4)
    g = torch.Generator().manual_seed(12)
    prev, lows = None, []
    for _ in range(1200):
        prev = ts.window(g, prev)
        lows.append(int(prev[4]))
    ref = ts.sample(3000, torch.Generator().manual_seed(13), "low").tolist()
    keys = sorted(set(ref))
    pmf = {k: ref.count(k) / len(ref) for k in keys}
    lows_in = [t for t in lows if t in pmf]
    assert len(lows_in) >= 0.99 * len(lows) and len(set(lows)) >= 20
    from scipy.stats import chi2_contingency

    table = [[lows_in.count(k) for k in keys], [ref.count(k) for k in keys]]
    table = [[a, b] for a, b in zip(*table, strict=True) if a + b >= 10]  # pool-free: drop rare cells
    assert chi2_contingency([list(r) for r in zip(*table, strict=True)]).pvalue > 1e-3
