"""`fvd`: Frechet distance between clip features of generated videos and real clips.

A set metric: ``update`` accumulates float64 feature statistics (mergeable across
processes); ``compute`` compares them with reference statistics of real clips. On the
tiny world the features come from the world's clip classifier (``features=tiny``) and
the reference is ``n_ref`` real clips of the eval split; reference statistics are
cached on disk under a key that hashes the extractor weights, the preprocessing and
the world, so they are computed once. The sample count is stored with every value and
a warning is raised when it is below the feature dimension + 1 (singular covariance).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.world import WorldCondition, make_clip
from metrics.backends.features import TINY_WEIGHTS, get_feature_backend
from metrics.base import Metric, MetricSpec, VideoSample
from metrics.frechet import FeatureStats, frechet_from_stats
from metrics.registry import register

PROTOCOL = {"clip": "all frames, stride 1", "resize": "none (native resolution)", "features": "pooled 32-d"}


def cache_dir() -> Path:
    root = os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness"
    return Path(root) / "fvd_reference"


@register(MetricSpec(
    name="fvd", version="1", higher_is_better=False, kind="set", aggregation="frechet", vbench_range=None,
    inputs=("frames", "condition"), weights=(f"tiny/{TINY_WEIGHTS[1]}",),
    description="Frechet distance of clip features, generated vs real clips",
    departures="features of the tiny world's clip classifier, not I3D (StyleGAN-V) or VideoMAE-v2; "
               "numbers are about the tiny world only",
))
class FVD(Metric):
    def __init__(self, features: str = "tiny", n_ref: int = 512) -> None:
        self.features, self.n_ref = features, n_ref
        self.backend = get_feature_backend(features)
        self.reset()

    def identity_options(self) -> dict[str, object]:
        return {"features": f"{self.features}-clip", "n_ref": self.n_ref}

    def reset(self) -> None:
        self.stats: FeatureStats | None = None
        self.world = None
        self._last: dict[str, Any] = {}

    def update(self, sample: VideoSample) -> dict[str, Any]:
        if not isinstance(sample.condition, WorldCondition):
            raise ValueError(f"fvd[features=tiny] needs tiny-world videos with their condition; "
                             f"{sample.video_id!r} has none")
        self.world = sample.condition.world
        feat = self.backend.clip_features(sample.frames)[None]
        if self.stats is None:
            self.stats = FeatureStats(feat.shape[1])
        self.stats.update(feat)
        return {"video_id": sample.video_id, "value": None, "weight": 1.0, "extras": {}}

    def reference(self) -> FeatureStats:
        key = hashlib.sha256(json.dumps({
            "weights": self.backend.fingerprint(), "protocol": PROTOCOL, "n_ref": self.n_ref,
            "world": self.world.model_dump(mode="json"), "split": "eval"}, sort_keys=True).encode()).hexdigest()[:20]
        path = cache_dir() / f"{key}.npz"
        if path.is_file():
            with np.load(path) as z:
                return FeatureStats.from_state({k: z[k] for k in z.files})
        stats = None
        for i in range(self.n_ref):
            feat = self.backend.clip_features(make_clip(self.world, "eval", i).frames)[None]
            stats = stats or FeatureStats(feat.shape[1])
            stats.update(feat)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial.npz")
        np.savez(tmp, **stats.state())
        os.replace(tmp, path)
        return stats

    def compute(self) -> float:
        if self.stats is None:
            raise ValueError("fvd: no videos were given")
        ref = self.reference()
        self._last = {"n": self.stats.n, "n_ref": ref.n, "dim": self.stats.dim, "protocol": PROTOCOL}
        return frechet_from_stats(self.stats, ref)

    @property
    def compute_extras(self) -> dict[str, Any]:
        return dict(self._last)

    def state(self) -> dict[str, Any]:
        return {"identity": self.identity, "stats": None if self.stats is None else self.stats.state()}

    def merge(self, states: list[dict[str, Any]]) -> None:
        for st in states:
            if st["identity"] != self.identity:
                raise ValueError(f"cannot merge state of {st['identity']} into {self.identity}")
            if st["stats"] is not None:
                other = FeatureStats.from_state(st["stats"])
                self.stats = other if self.stats is None else self.stats.merge(other)
