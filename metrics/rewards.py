"""Training rewards as metrics, so every checkpoint of every method is scored by them:
`latent_reward` (FCRM's learned latent reward model, the "Latent Reward" column of its
Tables 1 and 3), `luminance` (mean frame luma, the paper's lightness reward), and SHIFT's
pre-trained pixel-motion discriminators `imr_reward` and `lmr_reward`.

These are training judges (``role='training-judge'``), not yardsticks: every checkpoint is
scored on them so that a method's gain on the judge it trained on can be read against its gain
on the held-out evaluation judges (a reward that rises while distortion and FVD get worse is
being hacked); a table marks the cells where a method trained on the metric's judge.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch

from metrics.base import MetricSpec, PerVideoMetric, VideoSample
from metrics.registry import register


@register(MetricSpec(
    name="latent_reward", version="1", higher_is_better=True, kind="per-video", aggregation="mean",
    vbench_range=None, inputs=("frames", "first_frame", "caption"), weights=("rewards/latent_rm",),
    description="the latent reward model's score (frozen base-transformer features + head fitted to rater labels): "
                "the training judge of FCRM and of the preference methods' pairs",
    judge="latent_rm", role="training-judge",
    departures="FCRM's reward model reads Wan 2.1 features; on the tiny world it reads the tiny base model's",
    group="reward",
))
class LatentReward(PerVideoMetric):
    def __init__(self, path: str | None = None) -> None:
        from harness.scorers.latent_rm import load_reward_model

        self.model = load_reward_model(path)
        super().__init__()

    def identity_options(self) -> dict[str, object]:
        return {"model": self.model.digest}

    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        return self.score_many([sample])[0]

    def score_many(self, samples: list[VideoSample]) -> list[tuple[float | None, float, dict[str, Any]]]:
        """One forward per batch of videos (the model's own batching), not one per video."""
        from harness.scorers.latent_rm import video_scorer

        for s in samples:
            if s.first_frame is None or s.caption is None:
                raise ValueError(f"latent_reward needs the first frame and caption of video {s.video_id!r}")
        if not samples:
            return []
        values = video_scorer(self.model)(np.stack([s.frames for s in samples]),
                                          np.stack([np.asarray(s.first_frame) for s in samples]),
                                          [s.caption for s in samples])
        return [(float(v), 1.0, {}) for v in values]


@register(MetricSpec(
    name="luminance", version="1", higher_is_better=True, kind="per-video", aggregation="mean",
    vbench_range=None, inputs=("frames",), weights=(),
    description="mean frame luma (BT.601 on RGB in [0, 1]); FCRM's lightness reward",
    judge="luminance", role="training-judge",
    group="reward",
))
class Luminance(PerVideoMetric):
    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        rgb = np.asarray(sample.frames, dtype=np.float64) / 255.0
        return float((rgb @ np.array([0.299, 0.587, 0.114])).mean()), 1.0, {}


class _MotionReward(PerVideoMetric):
    """A pre-trained SHIFT discriminator's clipped raw logit (real vs generated motion). It is the
    static reward of the non-adversarial ablations and a fixed yardstick for every other method
    (an adversarial SHIFT run trains on a moving copy of it)."""

    kind = ""

    def __init__(self, path: str | None = None, clip: float = 10.0) -> None:
        from harness.scorers.motion_rm import load_discriminator

        self.model = load_discriminator(self.kind, path)
        self.clip = clip
        super().__init__()

    def identity_options(self) -> dict[str, object]:
        return {"model": self.model.digest, "tracker": self.model.tracker.identity}

    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        frames = np.asarray(sample.frames)
        t, h, w = frames.shape[:3]
        want = (self.model.num_frames, *self.model.frame_size)
        if (t, h, w) != want:
            raise ValueError(f"{self.kind}_reward reads {want[0]} frames of {want[1]}x{want[2]} px; video "
                             f"{sample.video_id!r} has {t} of {h}x{w}")
        seed = zlib.crc32(sample.video_id.encode())  # the LMR's random queries, fixed per video
        with torch.no_grad():
            logit = self.model(self.model.features([frames], [seed]))
        return float(logit.clamp(-self.clip, self.clip)[0]), 1.0, {}


@register(MetricSpec(
    name="imr_reward", version="1", higher_is_better=True, kind="per-video", aggregation="mean",
    vbench_range=None, inputs=("frames",), weights=("rewards/imr",),
    description="SHIFT's instantaneous motion reward: pre-trained ViT on transport-residual + flow-confidence maps",
    judge="imr", role="training-judge",
    departures="weights-free flow (OpenCV DIS, forward-backward confidence) instead of SEA-RAFT; a 2-layer ViT",
    group="reward",
))
class IMRReward(_MotionReward):
    kind = "imr"


@register(MetricSpec(
    name="lmr_reward", version="1", higher_is_better=True, kind="per-video", aggregation="mean",
    vbench_range=None, inputs=("frames",), weights=("rewards/lmr",),
    description="SHIFT's long-term motion reward: pre-trained trajectory transformer on tracked random points",
    judge="lmr", role="training-judge",
    departures="flow-chaining tracker (OpenCV DIS) instead of CoTracker3; 64 queries instead of 1024",
    group="reward",
))
class LMRReward(_MotionReward):
    kind = "lmr"
