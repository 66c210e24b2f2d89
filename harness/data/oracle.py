"""Oracle judges of the tiny world, computed from a clip's condition.

A clip's condition (first-frame sprite states + caption) determines its whole
expected motion (``world.simulate``), so a *generated* video can be judged
without a learned model:

* distortion: does every sprite keep its shape and colour? Sprites are found by
  colour; each frame's colour mask is compared (IoU) with the sprite's true
  shape rendered at the observed centre. Frames where the caption's physics says
  the sprite is partly hidden by another are skipped.
* motion adherence: does every sprite follow the trajectory the caption asks
  for? Mean over frames of exp(-|observed centre - expected centre| / tau).

Both are used as metrics (``distortion_rate``, ``motion_adherence``) and as the
tiny world's preference judge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.data.world import SIZES, ClipSpec, WorldConfig, render, shape_coverage

COLOUR_TOLERANCE = 70.0  # smallest colour span (uint8 RGB distance) used for coverage estimates
OCCLUSION_SKIP = 0.9  # skip frames where less than this share of a sprite is expected visible
DISTORTED_BELOW = 0.5  # a sprite whose mean integrity falls below this is distorted
POSITION_TAU = 1.0  # pixels at 16 px resolution; scales with resolution
POSITION_SLACK = 0.25  # centre errors below this are free (estimation noise at 16 px)


@dataclass(frozen=True)
class SpriteJudgement:
    integrity: float | None  # mean IoU over judged frames, in [0, 1]; None if always hidden
    adherence: float | None  # mean exp(-max(0, err - slack) / tau), t >= 1; None if always hidden
    mean_position_error: float  # pixels
    speed_ratio: float | None  # observed / expected mean speed (None for a still sprite)
    direction_cos: float | None  # cosine of net observed vs expected displacement


def _mean(values: list[float | None]) -> float:
    kept = [v for v in values if v is not None]
    # None = a sprite hidden behind another in every judged frame: no evidence either way.
    return float(np.mean(kept)) if kept else float("nan")


@dataclass(frozen=True)
class Judgement:
    sprites: tuple[SpriteJudgement, ...]

    @property
    def integrity(self) -> float:
        return _mean([s.integrity for s in self.sprites])

    @property
    def distortion(self) -> float:
        """1 - mean sprite integrity: 0 for a perfect video."""
        return 1.0 - self.integrity

    @property
    def distorted(self) -> bool:
        return any(s.integrity is not None and s.integrity < DISTORTED_BELOW for s in self.sprites)

    @property
    def motion_adherence(self) -> float:
        return _mean([s.adherence for s in self.sprites])


def coverage_estimate(frames: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """Per-pixel share (T, H, W) covered by a sprite of colour ``rgb``.

    An antialiased edge pixel is a blend bg * (1 - c) + rgb * c, so its distance to
    ``rgb`` is (1 - c) * |bg - rgb|; the background colour is the frame's median
    (sprites cover a small part of the frame). Pixels under 20 % coverage are
    dropped so that the texture's own variation does not leak in.
    """
    x = frames.astype(np.float64)
    colour = np.asarray(rgb, dtype=np.float64)
    dist = np.linalg.norm(x - colour, axis=-1)
    bg = np.median(x.reshape(x.shape[0], -1, 3), axis=1)  # (T, 3)
    span = np.maximum(np.linalg.norm(bg - colour, axis=-1), COLOUR_TOLERANCE)[:, None, None]
    cov = np.clip(1.0 - dist / span, 0.0, 1.0)
    return np.where(dist < 0.8 * span, cov, 0.0)


def _centre(weight: np.ndarray) -> np.ndarray | None:
    total = weight.sum()
    if total <= 1e-6:
        return None
    c = np.arange(weight.shape[0]) + 0.5
    return np.array([(weight.sum(0) * c).sum() / total, (weight.sum(1) * c).sum() / total])


def judge(frames: np.ndarray, spec: ClipSpec, cfg: WorldConfig) -> Judgement:
    """Judge a video (T, H, W, 3) uint8 against the condition ``spec``."""
    T, H, W, _ = frames.shape
    if (H, W) != (cfg.resolution, cfg.resolution) or T != cfg.num_frames:
        raise ValueError(
            f"video shape {frames.shape} does not match the world "
            f"({cfg.num_frames}, {cfg.resolution}, {cfg.resolution}, 3)"
        )
    expected = render(spec, cfg)  # expected trajectories and occlusion
    tau, slack = POSITION_TAU * cfg.scale, POSITION_SLACK * cfg.scale
    out = []
    for k, sprite in enumerate(spec.sprites):
        cover = coverage_estimate(frames, sprite.rgb)
        radius = SIZES[sprite.size] * cfg.scale
        full = shape_coverage(sprite.shape, cfg.resolution / 2, cfg.resolution / 2, radius, cfg.resolution).sum()
        ious, scores, errors, centres = [], [], [], []
        for t in range(T):
            exp_pos = expected.positions[t, k]
            occluded = expected.visible[t, k].sum() < OCCLUSION_SKIP * full
            c = _centre(cover[t])
            centres.append(c if c is not None else np.full(2, np.nan))
            if not occluded:
                if c is None:
                    ious.append(0.0)
                else:  # soft IoU with the true shape drawn at the observed centre
                    template = shape_coverage(sprite.shape, c[0], c[1], radius, cfg.resolution)
                    ious.append(np.minimum(template, cover[t]).sum() / np.maximum(template, cover[t]).sum())
            if t >= 1 and not occluded:
                err = np.inf if c is None else float(np.linalg.norm(c - exp_pos))
                errors.append(err)
                scores.append(float(np.exp(-max(0.0, err - slack) / tau)))
        centres_a = np.asarray(centres)
        exp_steps = np.linalg.norm(np.diff(expected.positions[:, k], axis=0), axis=-1)
        obs_steps = np.linalg.norm(np.diff(centres_a, axis=0), axis=-1)
        speed_ratio = None
        if exp_steps.mean() > 1e-6 and np.isfinite(obs_steps).all():
            speed_ratio = float(obs_steps.mean() / exp_steps.mean())
        exp_net = expected.positions[-1, k] - expected.positions[0, k]
        obs_net = centres_a[-1] - centres_a[0]
        direction_cos = None
        if np.linalg.norm(exp_net) > 1.0 and np.isfinite(obs_net).all() and np.linalg.norm(obs_net) > 1e-6:
            direction_cos = float(exp_net @ obs_net / (np.linalg.norm(exp_net) * np.linalg.norm(obs_net)))
        finite = [e for e in errors if np.isfinite(e)]
        out.append(
            SpriteJudgement(
                integrity=float(np.mean(ious)) if ious else None,
                adherence=float(np.mean(scores)) if scores else None,
                mean_position_error=float(np.mean(finite)) if finite else float("inf"),
                speed_ratio=speed_ratio,
                direction_cos=direction_cos,
            )
        )
    return Judgement(sprites=tuple(out))


def summarise(judgements: list[Judgement]) -> dict[str, float]:
    """Mean integrity and adherence over videos, and the share judged distorted."""
    return {
        "integrity": float(np.nanmean([j.integrity for j in judgements])),
        "motion_adherence": float(np.nanmean([j.motion_adherence for j in judgements])),
        "distorted_share": float(np.mean([j.distorted for j in judgements])),
    }
