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


def test_stride_carries_part_of_the_previous_window():
    ts = _ts(stride=4)
    g = torch.Generator().manual_seed(5)
    prev = ts.window(g)
    for _ in range(30):
        w = ts.window(g, prev)
        assert len(w) == 5 and (w >= 800).sum() == 4 and (w < 800).sum() == 1
        assert int(prev[-1]) in w.tolist()  # window 5, stride 4: one timestep carries over
        prev = w
    fresh = _ts()  # no stride: windows are drawn afresh
    assert len(fresh.window(g, prev)) == 5
