"""Training rewards as metrics, so every checkpoint of every method is scored by them:
`latent_reward` (FCRM's learned latent reward model, the "Latent Reward" column of its
Tables 1 and 3) and `luminance` (mean frame luma, the paper's lightness reward).

A method trained on one of these rewards is evaluated on it here; the report marks the
training reward so that its rise is read next to the held-out metrics (a reward that rises
while distortion and FVD get worse is being hacked).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.data.video_io import frames_to_tensor
from metrics.base import MetricSpec, PerVideoMetric, VideoSample
from metrics.registry import register


@register(MetricSpec(
    name="latent_reward", version="1", higher_is_better=True, kind="per-video", aggregation="mean",
    vbench_range=None, inputs=("frames", "first_frame", "caption"), weights=("rewards/latent_rm",),
    description="the latent reward model's score (frozen base-transformer features + head fitted to oracle scores)",
    departures="FCRM's reward model reads Wan 2.1 features; on the tiny world it reads the tiny base model's",
))
class LatentReward(PerVideoMetric):
    def __init__(self, path: str | None = None) -> None:
        from trainers.reward_model import load_reward_model

        self.model = load_reward_model(path)
        super().__init__()

    def identity_options(self) -> dict[str, object]:
        return {"model": self.model.digest}

    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        if sample.first_frame is None or sample.caption is None:
            raise ValueError(f"latent_reward needs the first frame and caption of video {sample.video_id!r}")
        backbone = self.model.backbone
        x0 = backbone.encode_video(frames_to_tensor(sample.frames)[None])
        first = frames_to_tensor(np.asarray(sample.first_frame)[None])[:, 0][None]
        with torch.no_grad():
            value = self.model.score(x0, backbone.encode_condition(first, [sample.caption]))
        return float(value[0]), 1.0, {}


@register(MetricSpec(
    name="luminance", version="1", higher_is_better=True, kind="per-video", aggregation="mean",
    vbench_range=None, inputs=("frames",), weights=(),
    description="mean frame luma (BT.601 on RGB in [0, 1]); FCRM's lightness reward",
))
class Luminance(PerVideoMetric):
    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        rgb = np.asarray(sample.frames, dtype=np.float64) / 255.0
        return float((rgb @ np.array([0.299, 0.587, 0.114])).mean()), 1.0, {}
