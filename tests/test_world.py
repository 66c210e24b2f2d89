import numpy as np
import pytest

from harness.data.world import (
    COLOURS,
    SIZES,
    SPEEDS,
    TRIANGLE_CENTROID_DY,
    WorldConfig,
    make_clip,
    sample_spec,
    shape_coverage,
    simulate,
)


def test_clips_are_deterministic_by_seed(world):
    a, b = make_clip(world, "pretrain", 7), make_clip(world, "pretrain", 7)
    assert np.array_equal(a.frames, b.frames) and a.caption == b.caption
    other_seed = make_clip(WorldConfig(seed=1), "pretrain", 7)
    assert not np.array_equal(a.frames, other_seed.frames)


def test_splits_are_disjoint(world):
    splits = ("pretrain", "finetune", "eval")
    firsts = {s: {make_clip(world, s, i).frames[0].tobytes() for i in range(200)} for s in splits}
    assert not firsts["pretrain"] & firsts["eval"]
    assert not firsts["finetune"] & firsts["eval"]
    assert not firsts["pretrain"] & firsts["finetune"]


def test_unknown_split_is_rejected(world):
    with pytest.raises(ValueError, match="allowed: pretrain, finetune, prompts, eval"):
        make_clip(world, "train", 0)


def test_ground_truth_matches_rendered_pixels(world):
    for i in range(40):
        clip = make_clip(world, "eval", i)  # eval clips are sharp and noise-free
        T, K = clip.positions.shape[:2]
        assert clip.frames.shape == (world.num_frames, world.resolution, world.resolution, 3)
        for t in range(T):
            for k, sprite in enumerate(clip.spec.sprites):
                full = clip.visible[t, k] > 0.999
                if full.any():  # fully covered, unoccluded pixels carry exactly the sprite colour
                    assert np.all(np.abs(clip.frames[t][full].astype(int) - COLOURS[sprite.colour]) <= 1)
                vis = clip.visible[t, k]
                if vis.sum() > 0.95 * shape_coverage(sprite.shape, 8, 8, SIZES[sprite.size], 16).sum():
                    c = np.arange(world.resolution) + 0.5
                    centre = np.array([(vis.sum(0) * c).sum(), (vis.sum(1) * c).sum()]) / vis.sum()
                    anchor = clip.positions[t, k].copy()
                    if sprite.shape == "triangle":
                        anchor[1] += TRIANGLE_CENTROID_DY * SIZES[sprite.size]
                    # 4x supersampling puts edges on a quarter-pixel grid: centres err by up to ~0.15 px
                    assert np.linalg.norm(centre - anchor) < 0.2
        # where no sprite covers a pixel, the frame is the background texture
        free = clip.visible.sum(axis=1) < 1e-9
        assert np.allclose(clip.frames[free], np.clip(np.rint(clip.clean[free]), 0, 255), atol=0.5)


def test_sprites_bounce_and_stay_inside(world):
    for i in range(100):
        spec = sample_spec(world, "pretrain", i)
        pos = simulate(spec.sprites, 32, world.resolution, world.scale)
        for k, s in enumerate(spec.sprites):
            r = SIZES[s.size]
            assert pos[:, k].min() >= r - 1e-9 and pos[:, k].max() <= world.resolution - r + 1e-9
            step = np.linalg.norm(np.diff(pos[:, k], axis=0), axis=-1)
            assert np.all(step <= SPEEDS[s.speed] + 1e-9)  # a bounce folds, never speeds up


def test_caption_describes_the_motion(world):
    clip = next(make_clip(world, "eval", i) for i in range(100) if make_clip(world, "eval", i).spec.pan)
    for s in clip.spec.sprites:
        assert f"{s.colour} {s.shape}" in clip.caption
        assert (s.direction in clip.caption) or s.speed == "still"
    assert f"camera pans {clip.spec.pan}" in clip.caption


def _mean_speed(world, split, n=300):
    speeds = []
    for i in range(n):
        clip = make_clip(world, split, i)
        speeds.append(np.linalg.norm(np.diff(clip.positions, axis=0), axis=-1).mean())
    return float(np.mean(speeds))


def test_finetune_split_has_less_motion_but_is_sharper(world):
    assert _mean_speed(world, "finetune") < 0.6 * _mean_speed(world, "pretrain")

    def sharpness(split):  # edge contrast: mean of the top 1 % horizontal differences (sprite edges)
        diffs = [np.abs(np.diff(make_clip(world, split, i).frames.astype(float), axis=2)).ravel()
                 for i in range(100)]
        return np.mean([np.sort(d)[-len(d) // 100:].mean() for d in diffs])

    pre = make_clip(world, "pretrain", 0)
    assert pre.spec.blur_sigma > 0 and make_clip(world, "finetune", 0).spec.blur_sigma == 0
    assert sharpness("finetune") > 1.1 * sharpness("pretrain")


def test_camera_pan_moves_the_background_only(world):
    clip = next(c for c in (make_clip(world, "eval", i) for i in range(200)) if c.spec.pan == "left")
    free = clip.visible.sum(axis=(0, 1)) < 1e-9  # pixels never touched by a sprite
    # a camera panning left slides the texture right: frame 1 shifted left by 0.5 px ~ frame 0
    shift = world.pan_speed
    bg0 = clip.clean[0]
    bg1 = clip.clean[1]
    assert not np.allclose(bg0[free], bg1[free])
    cols = np.arange(world.resolution) + 0.5
    interp = np.stack([np.stack([np.interp(cols - shift, cols, bg0[y, :, ch]) for ch in range(3)], -1)
                       for y in range(world.resolution)])
    inner = free.copy()
    inner[:, :2] = False
    assert np.abs(interp[inner] - bg1[inner]).mean() < 1.0


def test_finetune_captions_describe_appearance_only():
    # SFT's motion collapse depends on it: a caption that says "stays still" explains the
    # stillness away, and SFT then leaves motion unchanged.
    cfg = WorldConfig()
    for i in range(20):
        ft, ev = make_clip(cfg, "finetune", i).caption, make_clip(cfg, "eval", i).caption
        assert not any(w in ft.split() for w in ("moves", "still", "slow", "fast", "pans")), ft
        assert any(w in ev.split() for w in ("moves", "still")), ev
