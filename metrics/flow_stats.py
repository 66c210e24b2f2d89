"""Flow statistics shared by the motion metrics, as VBench computes them.

VBench reduces a flow field to one number per frame pair with "the mean of the
top x % magnitudes" (x = 5 for dynamic_degree, 2 for its static filter): the
number of pixels kept is ``int(H * W * x)``, taken at the flow's resolution.
Rounding of frame counts uses Python's ``round`` (half to even), as upstream.
"""

from __future__ import annotations

import numpy as np


def magnitude(flow: np.ndarray) -> np.ndarray:
    """Per-pixel flow length (H, W) in float64."""
    f = np.asarray(flow, dtype=np.float64)
    return np.sqrt(f[..., 0] ** 2 + f[..., 1] ** 2)


def top_fraction_mean(flow: np.ndarray, fraction: float) -> float:
    """Mean of the largest ``int(H*W*fraction)`` magnitudes (at least one pixel)."""
    mag = magnitude(flow).ravel()
    k = max(1, int(mag.size * fraction))
    return float(np.partition(mag, mag.size - k)[mag.size - k:].mean())


def mean_magnitude(flow: np.ndarray) -> float:
    return float(magnitude(flow).mean())


def sample_interval(fps: float, target_fps: float = 8.0) -> int:
    """Frame step bringing ``fps`` near ``target_fps``: max(1, round(fps / target)) as in VBench."""
    return max(1, round(fps / target_fps))


def consecutive_pairs(n: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(n - 1)]
