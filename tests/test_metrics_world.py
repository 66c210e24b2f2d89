"""Metrics that read the tiny world: consistency on the tiny features, FVD, oracle metrics."""

import numpy as np
import pytest

from harness.data.world import WorldCondition, make_clip
from metrics import VideoSample, get_metric
from metrics.consistency import consistency_score, i2v_score


def _unit(*rows):
    a = np.asarray(rows, dtype=float)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_consistency_formula_by_hand():
    f = _unit([1, 0], [0, 1], [1, 0])
    # t=1: (cos(f0,f1)=0 + cos(f0,f1)=0)/2 = 0 ; t=2: (cos(f1,f2)=0 + cos(f0,f2)=1)/2 = 0.5
    assert consistency_score(f) == pytest.approx(0.25)
    assert consistency_score(_unit([1, 0], [-1, 0])) == 0.0  # negative cosines clip at 0
    assert consistency_score(_unit([1, 2], [1, 2], [1, 2])) == pytest.approx(1.0)


def test_i2v_formula_by_hand():
    image = _unit([1, 0])[0]
    f = _unit([1, 0], [0.6, 0.8], [0, 1])
    # 0.4 * max(1, 0.6, 0) + 0.3 * mean(0.6, 0.8) + 0.3 * min(0.6, 0.8)
    assert i2v_score(image, f) == pytest.approx(0.4 + 0.3 * 0.7 + 0.3 * 0.6)


def _sample(world, frames, i, clip):
    return VideoSample(video_id=f"v{i}", frames=frames, fps=world.fps, first_frame=clip.frames[0],
                       caption=clip.caption, condition=WorldCondition(clip.spec, world))


@pytest.mark.parametrize("name", ["subject_consistency", "background_consistency", "i2v_subject", "i2v_background"])
def test_static_video_is_fully_consistent_and_noise_is_not(world, name):
    clip = make_clip(world, "eval", 0)
    static = np.repeat(clip.frames[:1], world.num_frames, axis=0)
    m = get_metric(name)
    assert m.identity == f"{name}[features=tiny]"
    assert m.update(_sample(world, static, 0, clip))["value"] == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, static.shape, dtype=np.uint8)
    assert m.update(_sample(world, noisy, 1, clip))["value"] < 0.9


def test_fvd_is_zero_for_the_reference_itself_and_large_for_noise(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    n = 40
    clips = [make_clip(world, "eval", i) for i in range(n)]
    m = get_metric("fvd", n_ref=n)
    assert m.identity == f"fvd[features=tiny-clip,n_ref={n}]"
    for i, c in enumerate(clips):
        m.update(_sample(world, c.frames, i, c))
    assert m.compute() == pytest.approx(0.0, abs=1e-4)
    assert m.compute_extras["n"] == n and m.compute_extras["n_ref"] == n
    cached = list((tmp_path / "fvd_reference").glob("*.npz"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    rng = np.random.default_rng(0)
    noise = get_metric("fvd", n_ref=n)
    for i, c in enumerate(clips):
        noise.update(_sample(world, rng.integers(0, 256, c.frames.shape, dtype=np.uint8), i, c))
    assert noise.compute() > 1.0
    assert cached[0].stat().st_mtime_ns == stamp  # reference statistics reused, not recomputed
    # merging two halves gives the single-process value
    a, b = get_metric("fvd", n_ref=n), get_metric("fvd", n_ref=n)
    for i, c in enumerate(clips):
        (a if i % 2 else b).update(_sample(world, c.frames, i, c))
    a.merge([b.state()])
    assert a.compute() == pytest.approx(0.0, abs=1e-4)


def test_oracle_metrics(world):
    clips = [make_clip(world, "eval", i) for i in range(12)]
    dist, adh = get_metric("distortion_rate"), get_metric("motion_adherence")
    assert dist.identity == "distortion_rate[judge=oracle]"
    rng = np.random.default_rng(1)
    for i, c in enumerate(clips):
        dist.update(_sample(world, rng.integers(0, 256, c.frames.shape, dtype=np.uint8), i, c))
        adh.update(_sample(world, c.frames, i, c))
    assert dist.compute() == 1.0  # noise is always distorted
    assert adh.compute() > 0.9  # real clips follow their captions
    with pytest.raises(ValueError, match="has none"):
        get_metric("motion_adherence").update(VideoSample("x", clips[0].frames, 8.0))
