"""motion_score: how much a video moves, in optical-flow pixels per evaluated frame pair.

The family of statistics used by the conditional-image-leakage paper and
SVD-style data curation: the flow magnitude averaged over pixels and consecutive
frame pairs (``stat="mean"``), or VBench's mean of the top 5 % magnitudes per
pair (``stat="top5"``). Frames can be subsampled (``stride``, or ``target_fps``
for a VBench-like max(1, round(fps/target)) step) and resized to a shorter side
(``resize``) first. The value is in pixels per evaluated pair *at the evaluated
resolution*; the record's extras carry the options and ``px_per_second`` (value
times the evaluated frame rate), which is comparable across strides.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from harness.scorers.backends.flow import FlowBackend, resolve_flow
from metrics.base import MetricSpec, PerVideoMetric, VideoSample
from metrics.flow_stats import consecutive_pairs, mean_magnitude, sample_interval, top_fraction_mean
from metrics.registry import register

STATS = {"mean": mean_magnitude, "top5": lambda f: top_fraction_mean(f, 0.05)}


def resize_shorter_side(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize (T, H, W, 3) so that min(H, W) == size, keeping the aspect ratio."""
    h, w = frames.shape[1:3]
    s = size / min(h, w)
    new_w, new_h = max(1, round(w * s)), max(1, round(h * s))
    if (new_h, new_w) == (h, w):
        return frames
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (new_w, new_h), interpolation=interp) for f in frames])


@register(MetricSpec(
    name="motion_score", version="1", higher_is_better=True, kind="per-video", aggregation="mean",
    vbench_range=None, inputs=("frames", "fps"), weights=(),
    description="mean optical-flow magnitude (px per evaluated frame pair) over pixels and pairs",
    departures="no single upstream: flow backend, statistic, frame step and resize are options recorded in "
               "the identity; weights-free flow (OpenCV DIS by default) rather than RAFT",
    group="motion",
))
class MotionScore(PerVideoMetric):
    def __init__(self, flow: str | FlowBackend = "dis", flow_options: dict[str, Any] | None = None,
                 stat: str = "mean", resize: int | None = None, stride: int = 1,
                 target_fps: float | None = None) -> None:
        if stat not in STATS:
            raise ValueError(f"motion_score: stat must be one of {sorted(STATS)}, got {stat!r}")
        if resize is not None and not (isinstance(resize, int) and resize >= 8):
            raise ValueError(f"motion_score: resize must be None or an integer >= 8, got {resize!r}")
        if not (isinstance(stride, int) and stride >= 1):
            raise ValueError(f"motion_score: stride must be an integer >= 1, got {stride!r}")
        if target_fps is not None and (stride != 1 or not target_fps > 0):
            raise ValueError("motion_score: give either stride or a positive target_fps, not both")
        self.flow = resolve_flow(flow, flow_options)
        self.stat, self.resize, self.stride, self.target_fps = stat, resize, stride, target_fps
        super().__init__()

    def identity_options(self) -> dict[str, object]:
        # The backend and statistic are always named; resampling options only when they resample.
        opts: dict[str, object] = {"flow": self.flow.identity, "stat": self.stat}
        if self.resize is not None:
            opts["resize"] = self.resize
        if self.stride != 1:
            opts["stride"] = self.stride
        if self.target_fps is not None:
            opts["fps"] = self.target_fps
        return opts

    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        step = sample_interval(sample.fps, self.target_fps) if self.target_fps else self.stride
        frames = sample.frames[::step]
        if len(frames) < 2:
            raise ValueError(f"{sample.video_id}: motion_score needs 2 frames after the step {step}, "
                             f"got {len(frames)}")
        if self.resize is not None:
            frames = resize_shorter_side(frames, self.resize)
        stat = STATS[self.stat]
        per_pair = [stat(f) for f in self.flow.flows(list(frames), consecutive_pairs(len(frames)))]
        value = float(np.mean(per_pair))
        extras = {"flow": self.flow.identity, "stat": self.stat, "resize": self.resize, "step": step,
                  "eval_hw": list(frames.shape[1:3]), "eval_fps": sample.fps / step,
                  "px_per_second": value * sample.fps / step, "pair_values": per_pair}
        return value, 1.0, extras
