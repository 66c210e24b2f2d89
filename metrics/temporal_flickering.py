"""temporal_flickering (VBench): how little a *static* video's pixels change between frames.

Per video: (255 - mean over consecutive pairs of the MAE between frames)/255,
with the MAE over all pixels and channels. VBench's text-to-video suite scores only
static videos; its static filter (``static_filter`` below) is applied here with a
weights-free flow backend instead of RAFT. VBench-I2V applies no filter (its
``temporal_flickering`` scores every video), and the ``vbench-i2v`` metric group asks
for ``static_filter=False`` accordingly. Non-static videos get a record with value None and
``extras["static"] = False`` and are left out of the mean; with no static video
the aggregate is NaN (with a warning), never a made-up number.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harness.scorers.backends.flow import FlowBackend, resolve_flow
from metrics.base import MetricSpec, PerVideoMetric, VideoSample
from metrics.flow_stats import consecutive_pairs, top_fraction_mean
from metrics.registry import register


@dataclass(frozen=True)
class StaticCheck:
    static: bool
    pair_scores: list[float]  # top-2 % mean flow magnitude of each consecutive pair
    wrap_scores: tuple[float, float]  # first->last and last->first
    thres: float
    count_num: int
    n_above: int


def static_filter(frames: np.ndarray, flow: FlowBackend) -> StaticCheck:
    """VBench's static filter: few moving consecutive pairs and little first<->last motion."""
    t, h, w = frames.shape[:3]
    if t < 2:
        raise ValueError(f"the static filter needs at least 2 frames, got {t}")
    pairs = consecutive_pairs(t) + [(0, t - 1), (t - 1, 0)]
    # RAFT's padded field, as upstream's get_score reads it (see dynamic_degree); thresholds from the frame size.
    scores = [top_fraction_mean(f, 0.02) for f in flow.padded_flows(list(frames), pairs)]
    thres = 3.0 * min(h, w) / 256.0
    count_num = round(2 * t / 16)
    consecutive, wrap = scores[:-2], (scores[-2], scores[-1])
    n_above = sum(s > thres for s in consecutive)
    static = n_above <= count_num and all(s <= thres * count_num * 2 for s in wrap)
    return StaticCheck(bool(static), consecutive, wrap, thres, count_num, n_above)


def flicker_score(frames: np.ndarray) -> float:
    """(255 - mean_t MAE(frame_t, frame_t+1)) / 255, MAE over all pixels and channels."""
    if frames.shape[0] < 2:
        raise ValueError(f"temporal flickering needs at least 2 frames, got {frames.shape[0]}")
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0)).reshape(frames.shape[0] - 1, -1)
    mae = diffs.mean(axis=1, dtype=np.float64)
    return float((255.0 - mae.mean()) / 255.0)


@register(MetricSpec(
    name="temporal_flickering", version="2", higher_is_better=True, kind="per-video", aggregation="mean",
    vbench_range=(0.6293, 1.0), inputs=("frames",), weights=(),
    description="VBench temporal flickering: 1 - mean inter-frame MAE / 255, static videos only",
    departures="static filter uses a weights-free flow backend (OpenCV DIS by default, auto-upscaled for "
               "tiny frames) instead of RAFT-things; MAE in float64 rather than float32; "
               "static_filter=False scores every video, as VBench-I2V does (the vbench-i2v group's setting)",
    group="vbench-quality",
    undefined="with its static filter (VBench's text-to-video form) it is undefined when no video passes the "
              "filter, as on 16-px frames, where the 3/256-of-the-side threshold is 0.19 px; static_filter=False "
              "scores every video, as VBench-I2V does",
))
class TemporalFlickering(PerVideoMetric):
    def __init__(self, flow: str | FlowBackend = "dis", flow_options: dict[str, Any] | None = None,
                 static_filter: bool = True) -> None:
        self.flow = resolve_flow(flow, flow_options)
        self.static_filter = bool(static_filter)
        super().__init__()

    def identity_options(self) -> dict[str, object]:
        return {"flow": self.flow.identity} if self.static_filter else {"static_filter": False}

    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        extras: dict[str, Any] = {}
        if self.static_filter:
            check = static_filter(sample.frames, self.flow)
            extras = asdict(check)
            if not check.static:
                return None, 1.0, extras
        return flicker_score(sample.frames), 1.0, extras

    def compute(self) -> float:
        if self._ids and all(v is None for v in self._values):
            warnings.warn(f"{self.identity}: none of the {len(self._ids)} videos passed the static filter; "
                          "temporal flickering is undefined (NaN)", stacklevel=2)
            return float("nan")
        return super().compute()

    @property
    def compute_extras(self) -> dict[str, Any]:
        extras = super().compute_extras
        if self.static_filter:
            extras.update(n_static=extras["n_included"], n_not_static=extras["n_excluded"])
        return extras
