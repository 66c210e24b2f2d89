import numpy as np
import pytest

from harness.data.oracle import judge
from harness.data.world import make_clip


@pytest.fixture(scope="module")
def clips(world):
    return [make_clip(world, "eval", i) for i in range(48)]


def _scores(videos, clips, world):
    js = [judge(v, c.spec, world) for v, c in zip(videos, clips, strict=True)]
    return (np.nanmean([j.integrity for j in js]), np.nanmean([j.motion_adherence for j in js]),
            np.mean([j.distorted for j in js]))


def test_real_clips_score_high_and_noise_low(clips, world):
    integ, adh, distorted = _scores([c.frames for c in clips], clips, world)
    assert integ > 0.8 and adh > 0.9 and distorted < 0.1
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, c.frames.shape, dtype=np.uint8) for c in clips]
    n_integ, n_adh, n_dist = _scores(noise, clips, world)
    assert n_integ < 0.15 and n_adh < 0.2 and n_dist > 0.9


def test_frozen_video_keeps_integrity_but_loses_adherence(clips, world):
    moving = [c for c in clips if any(s.speed != "still" for s in c.spec.sprites)]
    frozen = [np.repeat(c.frames[:1], len(c.frames), axis=0) for c in moving]
    integ, adh, _ = _scores(frozen, moving, world)
    _, real_adh, _ = _scores([c.frames for c in moving], moving, world)
    assert integ > 0.75
    assert adh < real_adh - 0.4


def test_erased_sprite_is_distorted(world):
    clip = make_clip(world, "eval", 3)
    frames = clip.frames.copy()
    k = 0
    mask = clip.visible[:, k] > 0.01
    bg = np.clip(np.rint(clip.clean), 0, 255).astype(np.uint8)
    frames[mask] = np.median(bg.reshape(-1, 3), axis=0).astype(np.uint8)  # paint the sprite out
    j = judge(frames, clip.spec, world)
    assert j.sprites[k].integrity < 0.2 and j.distorted


def test_wrong_shape_lowers_integrity(world):
    from harness.data.world import ClipSpec, render

    clip = next(c for c in (make_clip(world, "eval", i) for i in range(50)) if len(c.spec.sprites) == 1)
    s = clip.spec.sprites[0]
    swapped = "circle" if s.shape != "circle" else "triangle"
    other = s.__class__(**{**s.__dict__, "size": "large", "shape": swapped})
    fake = ClipSpec(**{**clip.spec.__dict__, "sprites": (other, *clip.spec.sprites[1:])})
    good = judge(clip.frames, clip.spec, world).sprites[0].integrity
    bad = judge(render(fake, world).frames, clip.spec, world).sprites[0].integrity
    assert bad < good - 0.2


def test_shape_mismatch_with_world_is_an_error(world):
    clip = make_clip(world, "eval", 0)
    with pytest.raises(ValueError, match="does not match the world"):
        judge(clip.frames[:4], clip.spec, world)
