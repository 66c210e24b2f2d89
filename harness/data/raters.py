"""Simulated raters of the tiny world: the labels a training judge is fitted to.

Real alignment pipelines train on a judge that is *not* the yardstick they are evaluated with:
PG-DPO ranks rollouts with VideoAlign, FCRM fits a latent reward model, Diffusion-APO asks a
VLM, and all of these are learned from human labels, which are partial and noisy, then
evaluated on held-out benchmarks. The tiny world reproduces that arrangement:

* the **oracle** (``harness.data.oracle``) is ground truth and belongs to evaluation
  (``distortion_rate``, ``motion_adherence``): every frame, every sprite, the exact trajectory;
* a **rater** looks at what a hurried human sees: three key frames (first, middle, last) for
  shape and colour integrity, and only where each sprite *ends up* for motion (its net
  displacement against the caption's, with twice the oracle's position tolerance), and adds
  per-video label noise (``NOISE_STD``, fixed by the video's content so a label is reproducible);
* the **training judge** of the preference and reward methods is the latent reward model fitted
  to rater labels on clips no method trains or is evaluated on (``harness build latent-rm``; the
  record of the shipped one gives its held-out agreement with the raters and with the oracle).

A method therefore never calls the oracle while it trains, and the oracle never sees the labels
its judge was fitted to; what the two share is the world itself, as real judges and benchmarks
share the notion of a good video.
"""

from __future__ import annotations

import hashlib

import numpy as np

from harness.data.oracle import POSITION_SLACK, POSITION_TAU, coverage_estimate
from harness.data.oracle import _centre as _centre  # the same colour-mass centre the oracle reads
from harness.data.world import SIZES, ClipSpec, WorldConfig, render, shape_coverage

KEY_FRAMES = 3  # first, middle, last
TOLERANCE = 2.0  # raters accept twice the oracle's position error before they mark motion down
NOISE_STD = 0.05  # per-label noise (score units, the score lies in [0, 1])


def key_frames(num_frames: int) -> list[int]:
    return sorted({0, num_frames // 2, num_frames - 1})


def rater_view(frames: np.ndarray, spec: ClipSpec, cfg: WorldConfig) -> tuple[float, float]:
    """(integrity on the key frames, end-point adherence) of a video (T, H, W, 3) uint8, noise-free."""
    T = frames.shape[0]
    keys = key_frames(T)
    expected = render(spec, cfg)
    integrity, adherence = [], []
    for k, sprite in enumerate(spec.sprites):
        cover = coverage_estimate(frames[keys], sprite.rgb)
        radius = SIZES[sprite.size] * cfg.scale
        ious = []
        for j in range(len(keys)):
            c = _centre(cover[j])
            if c is None:
                ious.append(0.0)
                continue
            template = shape_coverage(sprite.shape, c[0], c[1], radius, cfg.resolution)
            ious.append(float(np.minimum(template, cover[j]).sum() / np.maximum(template, cover[j]).sum()))
        integrity.append(float(np.mean(ious)))
        end = _centre(cover[-1])
        if end is None:
            adherence.append(0.0)
        else:
            err = float(np.linalg.norm(end - expected.positions[T - 1, k]))
            tau, slack = TOLERANCE * POSITION_TAU * cfg.scale, TOLERANCE * POSITION_SLACK * cfg.scale
            adherence.append(float(np.exp(-max(0.0, err - slack) / tau)))
    return float(np.mean(integrity)), float(np.mean(adherence))


def rater_score(frames: np.ndarray, spec: ClipSpec, cfg: WorldConfig, noise_std: float = NOISE_STD) -> float:
    """A rater's label in [0, 1]: the mean of key-frame integrity and end-point adherence, plus noise
    drawn from the video's content (the same video always gets the same label)."""
    integrity, adherence = rater_view(frames, spec, cfg)
    seed = int.from_bytes(hashlib.sha256(np.ascontiguousarray(frames).tobytes()).digest()[:8], "little")
    noise = np.random.default_rng(seed).normal(0.0, noise_std) if noise_std else 0.0
    return float(np.clip(0.5 * (integrity + adherence) + noise, 0.0, 1.0))
