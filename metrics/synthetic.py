"""Synthetic videos with known motion, for checking flow-based metrics and their backends.

A smooth random texture (Gaussian-blurred noise) is moved across the frame by
sub-pixel-accurate affine warps of a larger canvas, so the true flow is the
imposed displacement everywhere (no wrap-around seams, new content enters at the
border as in a camera pan).
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def texture_video(positions: np.ndarray, size: int | tuple[int, int] = 16, sigma: float = 1.5,
                  seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 of a texture displaced by ``positions`` (T, 2) (dx, dy) pixels."""
    h, w = (size, size) if isinstance(size, int) else size
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    pad = int(math.ceil(np.abs(pos).max(initial=0.0))) + 4 + int(math.ceil(3 * sigma))
    rng = np.random.default_rng(seed)
    canvas = cv2.GaussianBlur(rng.random((h + 2 * pad, w + 2 * pad)).astype(np.float32), (0, 0), sigma)
    canvas = (canvas - canvas.min()) / (canvas.max() - canvas.min())
    frames = []
    for dx, dy in pos:
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        moved = cv2.warpAffine(canvas, m, canvas.shape[::-1], flags=cv2.INTER_CUBIC,
                               borderMode=cv2.BORDER_REFLECT)[pad:pad + h, pad:pad + w]
        rgb = np.stack([moved, 1.0 - moved, 0.25 + 0.5 * moved], axis=-1)
        frames.append(np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8))
    return np.stack(frames)


def translating_texture(speed: float | tuple[float, float], num_frames: int = 8, size: int = 16,
                        sigma: float = 1.5, seed: int = 0) -> np.ndarray:
    """Texture moving at a constant ``speed`` px/frame (a scalar moves it to the right)."""
    v = np.array([speed, 0.0]) if np.isscalar(speed) else np.asarray(speed, dtype=np.float64)
    return texture_video(np.arange(num_frames)[:, None] * v[None, :], size, sigma, seed)
