"""dynamic_degree (VBench): the share of videos that move enough.

Frames are taken every max(1, round(fps/8)); for each consecutive sampled pair the
mean of the top 5 % flow magnitudes is compared with thres = 6 * min(H, W) / 256;
a video is dynamic when at least round(4 * N / 16) pairs exceed it (N = number
of sampled frames). With ``flow=raft`` the statistic is taken on RAFT's padded output, as upstream's
``get_score(image1, flow_up)``; the default is a weights-free flow backend (no padding).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.scorers.backends.flow import FlowBackend, resolve_flow
from metrics.base import MetricSpec, PerVideoMetric, VideoSample
from metrics.flow_stats import consecutive_pairs, sample_interval, top_fraction_mean
from metrics.registry import register


def dynamic_check(frames: np.ndarray, fps: float, flow: FlowBackend) -> dict[str, Any]:
    """Whether a video is dynamic, with the numbers the decision was made from."""
    interval = sample_interval(fps)
    sampled = list(frames[::interval])
    h, w = frames.shape[1:3]
    # On the field the flow backend computes: RAFT's is padded to multiples of 8, and upstream's get_score
    # reads that padded field (its size sets the top-5 % count); the threshold uses the frame's own size.
    scores = [top_fraction_mean(f, 0.05) for f in flow.padded_flows(sampled, consecutive_pairs(len(sampled)))]
    thres = 6.0 * min(h, w) / 256.0
    count_num = round(4 * len(sampled) / 16)
    n_above = sum(s > thres for s in scores)
    # Upstream returns as soon as the count reaches count_num, so any pair suffices when it is 0.
    dynamic = bool(scores) and n_above >= count_num
    return {"dynamic": dynamic, "pair_scores": scores, "thres": thres, "count_num": count_num,
            "n_above": n_above, "interval": interval, "n_sampled": len(sampled)}


@register(MetricSpec(
    name="dynamic_degree", version="2", higher_is_better=True, kind="per-video", aggregation="fraction",
    vbench_range=(0.0, 1.0), inputs=("frames", "fps"), weights=(),
    description="VBench dynamic degree: fraction of videos whose top-5% flow exceeds a size-scaled threshold",
    departures="weights-free flow backend (OpenCV DIS by default, auto-upscaled for tiny frames) instead of "
               "RAFT-things with 20 iterations (flow=raft: upstream's, top-5 % on the padded field as upstream)",
    group="vbench-quality",
))
class DynamicDegree(PerVideoMetric):
    def __init__(self, flow: str | FlowBackend = "dis", flow_options: dict[str, Any] | None = None) -> None:
        self.flow = resolve_flow(flow, flow_options)
        super().__init__()

    def identity_options(self) -> dict[str, object]:
        return {"flow": self.flow.identity}

    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        check = dynamic_check(sample.frames, sample.fps, self.flow)
        return float(check["dynamic"]), 1.0, check
