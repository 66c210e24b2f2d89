"""The tiny world's oracle judges as metrics: `distortion_rate` and `motion_adherence`.

They need the clip's condition (``VideoSample.condition`` = harness.data.world.WorldCondition)
because the oracle compares the video with the physics its caption and first frame ask
for; on imported videos without one they fail with a clear error.
"""

from __future__ import annotations

from typing import Any

from harness.data.oracle import DISTORTED_BELOW, judge
from harness.data.world import WorldCondition
from metrics.base import MetricSpec, PerVideoMetric, VideoSample
from metrics.registry import register


def _judge(sample: VideoSample, metric: str):
    if not isinstance(sample.condition, WorldCondition):
        raise ValueError(f"{metric} judges tiny-world videos against their condition; video "
                         f"{sample.video_id!r} has none (imported videos need another judge)")
    return judge(sample.frames, sample.condition.spec, sample.condition.world)


@register(MetricSpec(
    name="distortion_rate", version="1", higher_is_better=False, kind="per-video", aggregation="fraction",
    vbench_range=None, inputs=("frames", "condition"), weights=(),
    description=f"share of videos with a sprite whose shape/colour integrity is below {DISTORTED_BELOW}",
    judge="oracle",
    departures="Diffusion-APO judges distortion with humans or a VLM; on the tiny world the oracle judge "
               "from ground truth does it",
    group="hacking",
))
class DistortionRate(PerVideoMetric):
    def identity_options(self) -> dict[str, object]:
        return {"judge": "oracle"}

    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        j = _judge(sample, "distortion_rate")
        return float(j.distorted), 1.0, {"integrity": j.integrity,
                                         "sprites": [s.integrity for s in j.sprites]}


@register(MetricSpec(
    name="motion_adherence", version="1", higher_is_better=True, kind="per-video", aggregation="mean",
    vbench_range=None, inputs=("frames", "condition"), weights=(),
    description="how closely sprites follow the trajectory their caption asks for (oracle, 0..1)",
    judge="oracle",
    group="motion",
))
class MotionAdherence(PerVideoMetric):
    def identity_options(self) -> dict[str, object]:
        return {"judge": "oracle"}

    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        j = _judge(sample, "motion_adherence")
        return j.motion_adherence, 1.0, {
            "speed_ratio": [s.speed_ratio for s in j.sprites],
            "direction_cos": [s.direction_cos for s in j.sprites],
            "position_error": [s.mean_position_error for s in j.sprites],
        }
