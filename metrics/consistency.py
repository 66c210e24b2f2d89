"""VBench consistency dimensions on per-frame features.

subject_consistency / background_consistency (per video, frame-weighted aggregate):
    mean over t >= 1 of (max(0, cos(f_{t-1}, f_t)) + max(0, cos(f_0, f_t))) / 2
i2v_subject / i2v_background (per video, mean aggregate), with img = the conditioning image:
    0.4 * max_t cos(img, f_t) + 0.3 * mean_t cos(f_{t-1}, f_t) + 0.3 * min_t cos(f_{t-1}, f_t)
with cosines clipped at 0. Upstream reads DINO (subject), CLIP (background) and DreamSim
(i2v_background) features: ``features=dino-vitb16`` (subject_consistency's transform),
``dino-vitb16-i2v`` (i2v_subject's), ``clip-vitb32`` and ``dreamsim`` (the DreamSim ensemble)
load them from the weight cache, with upstream's preprocessing (frames as float tensors, the
conditioning image through PIL). The default ``tiny`` reads the tiny world's frame encoder,
whose subject head plays DINO's role and background head plays CLIP's/DreamSim's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.scorers.backends.features import TINY_WEIGHTS, frame_features, get_embedder
from metrics.base import MetricSpec, PerVideoMetric, VideoSample
from metrics.registry import register

TINY_DEPARTURE = ("features from the tiny world's frame encoder (backend 'tiny'), not {upstream}; "
                  "numbers are about the tiny world only")


def consistency_score(feats: np.ndarray) -> float:
    """VBench's subject/background consistency of L2-normalised features (T, D)."""
    prev = np.maximum(0.0, np.sum(feats[1:] * feats[:-1], axis=1))
    first = np.maximum(0.0, feats[1:] @ feats[0])
    return float(np.mean((prev + first) / 2))


def i2v_score(image_feat: np.ndarray, feats: np.ndarray) -> float:
    """VBench-I2V's 0.4 / 0.3 / 0.3 combination of image-to-frame and frame-to-frame cosines."""
    to_image = np.maximum(0.0, feats @ image_feat)
    adjacent = np.maximum(0.0, np.sum(feats[1:] * feats[:-1], axis=1))
    return float(0.4 * to_image.max() + 0.3 * adjacent.mean() + 0.3 * adjacent.min())


class _FeatureMetric(PerVideoMetric):
    head: str  # "subject" or "background"

    def __init__(self, features: str = "tiny") -> None:
        self.features = features
        self.embedder = get_embedder(features, self.head)
        super().__init__()

    def identity_options(self) -> dict[str, object]:
        return {"features": self.embedder.identity}

    def _feats(self, frames: np.ndarray) -> np.ndarray:
        return frame_features(self.embedder, frames)


class _Consistency(_FeatureMetric):
    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        if sample.num_frames < 2:
            raise ValueError(f"{sample.video_id}: {self.spec.name} needs at least 2 frames")
        return consistency_score(self._feats(sample.frames)), float(sample.num_frames - 1), {}


class _I2V(_FeatureMetric):
    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        if sample.first_frame is None:
            raise ValueError(f"{sample.video_id}: {self.spec.name} needs the conditioning image (first_frame)")
        return i2v_score(self._image_feat(sample.first_frame), self._feats(sample.frames)), 1.0, {}

    def _image_feat(self, image: np.ndarray) -> np.ndarray:
        """The conditioning image's features: real embedders read it as upstream does (PIL), the tiny one
        as a frame."""
        embed_image = getattr(self.embedder, "embed_image", None)
        return embed_image(image) if embed_image is not None else self._feats(image[None])[0]


def _spec(name: str, aggregation: str, rng: tuple[float, float], upstream: str, inputs: tuple[str, ...],
          description: str, group: str) -> MetricSpec:
    # version 2: real embedders resize float frames without rounding, the i2v ones with torchvision's antialias
    # and the conditioning image through PIL, as upstream (tests/test_golden_upstream.py)
    return MetricSpec(name=name, version="2", higher_is_better=True, kind="per-video", aggregation=aggregation,
                      vbench_range=rng, inputs=inputs, weights=tuple(f"tiny/{w}" for w in TINY_WEIGHTS[:1]),
                      description=description, departures=TINY_DEPARTURE.format(upstream=upstream), group=group)


@register(_spec("subject_consistency", "frame_weighted_mean", (0.1462, 1.0), "DINO ViT-B/16", ("frames",),
                "appearance of the subject stays the same across frames", "vbench-quality"))
class SubjectConsistency(_Consistency):
    head = "subject"


@register(_spec("background_consistency", "frame_weighted_mean", (0.2615, 1.0), "CLIP ViT-B/32", ("frames",),
                "the background stays the same across frames", "vbench-quality"))
class BackgroundConsistency(_Consistency):
    head = "background"


@register(_spec("i2v_subject", "mean", (0.1462, 1.0), "DINO ViT-B/16", ("frames", "first_frame"),
                "the subject matches the conditioning image and stays consistent", "vbench-i2v"))
class I2VSubject(_I2V):
    head = "subject"


@register(_spec("i2v_background", "mean", (0.2615, 1.0), "DreamSim", ("frames", "first_frame"),
                "the background matches the conditioning image and stays consistent", "vbench-i2v"))
class I2VBackground(_I2V):
    head = "background"
