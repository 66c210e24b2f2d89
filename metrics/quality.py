"""VBench per-frame quality dimensions read from learned models: aesthetic_quality, imaging_quality.

aesthetic_quality: LAION's linear aesthetic head on L2-normalised CLIP ViT-L/14 image
embeddings, score / 10 per frame, mean over frames, then over videos.
imaging_quality: MUSIQ (SPAQ checkpoint) per frame, longer side resized to 512 if larger (in
float, not rounded back to uint8, as upstream; version 2), score / 100, mean over frames, then over videos.

Neither has a tiny-world substitute: they need their upstream weights in the local cache
(``harness weights status``) and are not in the tiny preset's metric list.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.scorers.backends.features import frame_features, get_embedder
from metrics.base import MetricSpec, PerVideoMetric, VideoSample
from metrics.registry import register


@register(MetricSpec(
    name="aesthetic_quality", version="1", higher_is_better=True, kind="per-video", aggregation="mean",
    vbench_range=(0.0, 1.0), inputs=("frames",), weights=("clip_vit_l14", "laion_aesthetic_l14"),
    description="LAION aesthetic predictor on CLIP ViT-L/14 frame embeddings, / 10, mean over frames",
    judge="aesthetic",  # the same predictor is FCRM's `aesthetic` reward: a run trained on it is marked
    group="vbench-quality",
))
class AestheticQuality(PerVideoMetric):
    def __init__(self, features: str = "clip-vitl14") -> None:
        from harness.scorers.backends.real.vit import laion_aesthetic

        if features != "clip-vitl14":
            raise ValueError(f"aesthetic_quality: the LAION head reads clip-vitl14 features, not {features!r}")
        self.embedder = get_embedder(features)
        self.head, head_random = laion_aesthetic(self.embedder.device)
        self.random = head_random or "random" in self.embedder.identity
        super().__init__()

    def identity_options(self) -> dict[str, object]:
        return {"model": "clip-vitl14+laion-linear" + ("+random-weights" if self.random else "")}

    @torch.no_grad()
    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        feats = torch.from_numpy(frame_features(self.embedder, sample.frames)).float().to(self.embedder.device)
        per_frame = self.head(feats).squeeze(-1).double().cpu().numpy() / 10.0
        return float(np.mean(per_frame)), 1.0, {"per_frame": per_frame.round(5).tolist()}


@register(MetricSpec(
    name="imaging_quality", version="2", higher_is_better=True, kind="per-video", aggregation="mean",
    vbench_range=(0.0, 1.0), inputs=("frames",), weights=("musiq_spaq",),
    description="MUSIQ (SPAQ) per frame, longer side at most 512, / 100, mean over frames",
    group="vbench-quality",
))
class ImagingQuality(PerVideoMetric):
    def __init__(self, device: str | None = None, batch: int = 16) -> None:
        from harness.scorers.backends.real.musiq import MusiqScorer
        from harness.scorers.backends.real.vit import default_device

        self.scorer = MusiqScorer(device=device or default_device(), batch=batch)
        super().__init__()

    def identity_options(self) -> dict[str, object]:
        return {"model": self.scorer.identity}

    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        per_frame = self.scorer.score_frames(sample.frames) / 100.0
        return float(np.mean(per_frame)), 1.0, {"per_frame": np.round(per_frame, 5).tolist()}
