"""The tiny world: a procedurally generated image-to-video domain.

Every clip is a few frames of one to three sprites (shape, colour, size)
moving at a constant speed, bouncing off the walls, over a smooth periodic
texture that an optional camera pan slides underneath them. A clip is fully
determined by (world seed, split, index), and its motion is fully determined
by its first frame plus its caption: this is what lets the oracle judges
(``harness.data.oracle``) score a *generated* video against the physics the
caption asks for.

Conventions: positions are (x, y) in pixel units with the pixel centre of
column ``i`` at ``x = i + 0.5``; frames are uint8 arrays (T, H, W, 3).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 235),
    "yellow": (235, 215, 40),
    "magenta": (215, 50, 215),
    "cyan": (40, 215, 215),
}
SIZES = {"small": 2.0, "large": 3.0}  # radius in pixels at 16 px resolution
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-0.7071, -0.7071),
    "up-right": (0.7071, -0.7071),
    "down-left": (-0.7071, 0.7071),
    "down-right": (0.7071, 0.7071),
}
SPEEDS = {"still": 0.0, "slow": 0.5, "fast": 1.25}  # pixels per frame at 16 px
PAN_DIRECTIONS = ("left", "right", "up", "down")
SPLITS = ("pretrain", "finetune", "prompts", "eval")
_SUPERSAMPLE = 4  # sub-pixel grid used to antialias sprite edges
TRIANGLE_CENTROID_DY = -1.1 + 2 / 3 * (0.75 + 1.1)  # apex at -1.1 r, base at 0.75 r


class SplitSpec(BaseModel):
    """How clips of one split are drawn."""

    model_config = ConfigDict(extra="forbid")

    speed_probs: dict[Literal["still", "slow", "fast"], float]
    sprite_count_probs: list[float] = Field(min_length=1, max_length=3)
    pan_prob: float = Field(ge=0.0, le=1.0)
    blur_sigma: float = Field(ge=0.0, description="Gaussian blur in pixels (0 = sharp)")
    noise_std: float = Field(ge=0.0, description="additive pixel noise, in uint8 units")
    caption_detail: Literal["full", "appearance"] = Field(
        "full",
        description="full: each sprite's motion and the pan are stated; appearance: sprites only "
        "(size, colour, shape), like curated footage whose captions do not describe motion",
    )


def _default_splits() -> dict[str, SplitSpec]:
    return {
        # Broad motion, slightly soft footage. No per-frame noise: i.i.d. noise flickers,
        # and optical flow reads flicker as motion (every clip would count as dynamic).
        "pretrain": SplitSpec(
            speed_probs={"still": 0.2, "slow": 0.4, "fast": 0.4},
            sprite_count_probs=[0.5, 0.35, 0.15],
            pan_prob=0.3,
            blur_sigma=0.6,
            noise_std=0.0,
        ),
        # Sharper footage, but mostly slow or still, and captioned by appearance only (as
        # curated aesthetic sets are): SFT on it should lose motion. With full captions the
        # stillness is explained by "stays still" and SFT leaves motion almost unchanged.
        "finetune": SplitSpec(
            speed_probs={"still": 0.5, "slow": 0.4, "fast": 0.1},
            sprite_count_probs=[0.5, 0.35, 0.15],
            pan_prob=0.1,
            blur_sigma=0.0,
            noise_std=0.0,
            caption_detail="appearance",
        ),
        # Conditions the on-policy methods roll out from (preference pairs, RL prompts):
        # the eval recipe with independent draws, so no method trains on an eval condition.
        "prompts": SplitSpec(
            speed_probs={"still": 0.2, "slow": 0.4, "fast": 0.4},
            sprite_count_probs=[0.5, 0.35, 0.15],
            pan_prob=0.3,
            blur_sigma=0.0,
            noise_std=0.0,
        ),
        # Held-out conditions: broad motion, sharp (the target the methods aim at).
        "eval": SplitSpec(
            speed_probs={"still": 0.2, "slow": 0.4, "fast": 0.4},
            sprite_count_probs=[0.5, 0.35, 0.15],
            pan_prob=0.3,
            blur_sigma=0.0,
            noise_std=0.0,
        ),
    }


class WorldConfig(BaseModel):
    """Geometry of the world and the recipe of each split."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    resolution: int = Field(16, ge=8, le=64)
    num_frames: int = Field(8, ge=2, le=32)
    fps: int = Field(8, ge=1)
    pan_speed: float = Field(0.5, ge=0.0, description="pixels per frame at 16 px")
    splits: dict[Literal["pretrain", "finetune", "prompts", "eval"], SplitSpec] = Field(
        default_factory=_default_splits
    )

    @property
    def scale(self) -> float:
        """Sizes and speeds are defined at 16 px and scale with resolution."""
        return self.resolution / 16.0


@dataclass(frozen=True)
class Sprite:
    shape: str
    colour: str
    size: str
    direction: str
    speed: str
    x0: float
    y0: float

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]

    def phrase(self) -> str:
        if self.speed == "still":
            return f"{self.size} {self.colour} {self.shape} stays still"
        return f"{self.size} {self.colour} {self.shape} moves {self.direction} {self.speed}"


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines a clip (the sampled 'scene')."""

    split: str
    index: int
    seed: int
    sprites: tuple[Sprite, ...]
    pan: str | None
    texture: tuple[tuple[float, ...], ...]  # rows of (amp, fx, fy, phase) per channel group
    tint: tuple[float, float, float]
    blur_sigma: float
    noise_std: float
    caption_detail: str = "full"

    @property
    def caption(self) -> str:
        if self.caption_detail == "appearance":
            return " and ".join(f"{s.size} {s.colour} {s.shape}" for s in self.sprites)
        text = " and ".join(s.phrase() for s in self.sprites)
        if self.pan is not None:
            text += f", camera pans {self.pan}"
        return text

    def to_dict(self) -> dict:
        d = asdict(self)
        d["caption"] = self.caption
        return d


@dataclass
class Clip:
    """A rendered clip with its ground truth."""

    spec: ClipSpec
    frames: np.ndarray  # (T, H, W, 3) uint8
    positions: np.ndarray  # (T, K, 2) float, sprite centres (x, y)
    visible: np.ndarray  # (T, K, H, W) float in [0, 1], visible coverage per sprite
    clean: np.ndarray = field(repr=False)  # (T, H, W, 3) float, before blur and noise

    @property
    def caption(self) -> str:
        return self.spec.caption

    @property
    def masks(self) -> np.ndarray:
        """(T, K, H, W) bool: pixels where a sprite covers at least half the pixel."""
        return self.visible >= 0.5


def _split_id(split: str) -> int:
    return int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "little")


def clip_rng(world_seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, index): splits never share a draw."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return np.random.default_rng(np.random.SeedSequence([world_seed, _split_id(split), index]))


def sample_spec(cfg: WorldConfig, split: str, index: int) -> ClipSpec:
    rng = clip_rng(cfg.seed, split, index)
    spec = cfg.splits[split]
    probs = np.asarray(spec.sprite_count_probs, dtype=float)
    count = int(rng.choice(len(probs), p=probs / probs.sum())) + 1
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    speed_names = list(spec.speed_probs)
    speed_p = np.asarray([spec.speed_probs[s] for s in speed_names], dtype=float)
    sprites = []
    for k in range(count):
        size = str(rng.choice(list(SIZES)))
        r = SIZES[size] * cfg.scale
        sprites.append(
            Sprite(
                shape=str(rng.choice(SHAPES)),
                colour=str(colours[k]),
                size=size,
                direction=str(rng.choice(list(DIRECTIONS))),
                speed=str(rng.choice(speed_names, p=speed_p / speed_p.sum())),
                x0=float(rng.uniform(r, cfg.resolution - r)),
                y0=float(rng.uniform(r, cfg.resolution - r)),
            )
        )
    pan = str(rng.choice(PAN_DIRECTIONS)) if rng.random() < spec.pan_prob else None
    # Periodic texture: integer frequencies over a 64 px period keep the pan exact.
    texture = tuple(
        (
            float(rng.uniform(6, 14)),
            float(rng.integers(-4, 5)),
            float(rng.integers(-4, 5)),
            float(rng.uniform(0, 2 * np.pi)),
        )
        for _ in range(4)
    )
    tint = tuple(float(v) for v in rng.uniform(85, 135, size=3))
    return ClipSpec(
        split=split,
        index=index,
        seed=cfg.seed,
        sprites=tuple(sprites),
        pan=pan,
        texture=texture,
        tint=tint,  # type: ignore[arg-type]
        blur_sigma=spec.blur_sigma,
        noise_std=spec.noise_std,
        caption_detail=spec.caption_detail,
    )


def sprite_velocity(sprite: Sprite, scale: float) -> np.ndarray:
    return np.asarray(DIRECTIONS[sprite.direction]) * SPEEDS[sprite.speed] * scale


def pan_velocity(pan: str | None, speed: float) -> np.ndarray:
    """Screen-space velocity of the background: a camera panning left slides it right."""
    if pan is None:
        return np.zeros(2)
    d = np.asarray(DIRECTIONS[pan])
    return -d * speed


def simulate(
    sprites: tuple[Sprite, ...], num_frames: int, resolution: int, scale: float
) -> np.ndarray:
    """Centre trajectories (T, K, 2) with elastic bounces off the frame walls."""
    out = np.zeros((num_frames, len(sprites), 2))
    for k, s in enumerate(sprites):
        r = SIZES[s.size] * scale
        p = np.array([s.x0, s.y0])
        v = sprite_velocity(s, scale)
        for t in range(num_frames):
            out[t, k] = p
            p = p + v
            for a in range(2):
                if p[a] < r:
                    p[a], v[a] = 2 * r - p[a], -v[a]
                elif p[a] > resolution - r:
                    p[a], v[a] = 2 * (resolution - r) - p[a], -v[a]
    return out


def shape_coverage(shape: str, cx: float, cy: float, r: float, resolution: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape, from a supersampled grid: (H, W)."""
    n = resolution * _SUPERSAMPLE
    c = (np.arange(n) + 0.5) / _SUPERSAMPLE
    x, y = np.meshgrid(c - cx, c - cy)
    if shape == "circle":
        inside = x * x + y * y <= r * r
    elif shape == "square":
        h = 0.85 * r
        inside = (np.abs(x) <= h) & (np.abs(y) <= h)
    elif shape == "triangle":
        # Upright isosceles triangle anchored at (cx, cy); its area centroid lies
        # TRIANGLE_CENTROID_DY * r below the anchor (the oracle uses the same template).
        top, base = -1.1 * r, 0.75 * r
        half_width = 1.05 * r * (y - top) / (base - top)
        inside = (y >= top) & (y <= base) & (np.abs(x) <= half_width)
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")
    return inside.reshape(resolution, _SUPERSAMPLE, resolution, _SUPERSAMPLE).mean(axis=(1, 3))


def render_background(spec: ClipSpec, resolution: int, offset: np.ndarray) -> np.ndarray:
    """Smooth periodic texture sampled at screen pixels shifted by ``offset``: (H, W, 3)."""
    c = np.arange(resolution) + 0.5
    x, y = np.meshgrid(c - offset[0], c - offset[1])
    period = 64.0
    lum = np.zeros_like(x)
    for amp, fx, fy, phase in spec.texture:
        lum += amp * np.sin(2 * np.pi * (fx * x + fy * y) / period + phase)
    return np.asarray(spec.tint)[None, None, :] + lum[..., None]


def _gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return frames
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(frames, sigma=(0, sigma, sigma, 0), mode="nearest")


def render(spec: ClipSpec, cfg: WorldConfig) -> Clip:
    res, T = cfg.resolution, cfg.num_frames
    positions = simulate(spec.sprites, T, res, cfg.scale)
    pan_v = pan_velocity(spec.pan, cfg.pan_speed * cfg.scale)
    K = len(spec.sprites)
    clean = np.zeros((T, res, res, 3))
    visible = np.zeros((T, K, res, res))
    for t in range(T):
        img = render_background(spec, res, pan_v * t)
        covers = [
            shape_coverage(s.shape, *positions[t, k], SIZES[s.size] * cfg.scale, res)
            for k, s in enumerate(spec.sprites)
        ]
        # Later sprites are drawn on top; visible coverage accounts for occlusion.
        for k, (s, cov) in enumerate(zip(spec.sprites, covers, strict=True)):
            img = img * (1 - cov[..., None]) + np.asarray(s.rgb)[None, None] * cov[..., None]
            vis = cov.copy()
            for above in covers[k + 1 :]:
                vis *= 1 - above
            visible[t, k] = vis
        clean[t] = img
    degraded = _gaussian_blur(clean, spec.blur_sigma)
    if spec.noise_std > 0:
        noise_rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _split_id(spec.split), spec.index, 1]))
        degraded = degraded + noise_rng.normal(0.0, spec.noise_std, size=degraded.shape)
    frames = np.clip(np.rint(degraded), 0, 255).astype(np.uint8)
    return Clip(spec=spec, frames=frames, positions=positions, visible=visible, clean=clean)


def make_clip(cfg: WorldConfig, split: str, index: int) -> Clip:
    return render(sample_spec(cfg, split, index), cfg)


@dataclass(frozen=True)
class WorldCondition:
    """What a generated tiny-world video was conditioned on, as metrics receive it."""

    spec: ClipSpec
    world: WorldConfig
