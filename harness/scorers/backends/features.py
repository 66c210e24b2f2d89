"""Frame embedders for the consistency dimensions, by name, and the evaluation-wide feature cache.

``tiny`` (the tiny world's learned extractors, shipped with the package) has a subject
and a background head; the real embedders (``dino-vitb16``, ``dino-vitb16-i2v``,
``clip-vitb32``, ``clip-vitl14``) live in ``harness.scorers.backends.real.vit`` and load upstream
weights from the local cache. Models are loaded once per process.

``shared_features(videos)`` opens a cache for one evaluation: the first metric asking
for an embedder's features of any video gets them computed for *all* videos of the set
in batches across videos, and every later metric using the same embedder (same model,
same preprocessing) reuses them, e.g. the tiny subject head for subject_consistency
and i2v_subject. Embedders with different preprocessing (VBench's DINO transforms for
subject_consistency and i2v_subject differ) are different cache keys, so reuse never
changes a number.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

TINY_FEATURES_DIR = Path(str(resources.files("harness"))) / "assets" / "tiny" / "features"
TINY_WEIGHTS = ("frame_encoder.safetensors", "clip_classifier.safetensors")


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float in [-1, 1], the extractors' training input."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class TinyFeatures:
    name = "tiny"

    def __init__(self, directory: Path = TINY_FEATURES_DIR):
        from harness.scorers.tiny_features import load_features

        self.directory = directory
        self.frame_encoder, self.clip_classifier = load_features(directory)

    @torch.no_grad()
    def frame_features(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised (subject, background) embeddings per frame: (T, 64), (T, 32)."""
        subj, bg = self.frame_encoder(_to_tensor(frames))
        return (torch.nn.functional.normalize(subj, dim=-1).double().numpy(),
                torch.nn.functional.normalize(bg, dim=-1).double().numpy())

    @torch.no_grad()
    def clip_features(self, frames: np.ndarray) -> np.ndarray:
        """(D,) float64 features of one whole clip."""
        x = _to_tensor(frames).permute(1, 0, 2, 3).unsqueeze(0)  # (1, 3, T, H, W)
        return self.clip_classifier(x)[0].double().numpy()

    def fingerprint(self) -> str:
        """Hash of the weights: part of the FVD reference-statistics cache key."""
        h = hashlib.sha256()
        for name in TINY_WEIGHTS:
            h.update((self.directory / name).read_bytes())
        return h.hexdigest()[:16]


@lru_cache(maxsize=4)
def get_feature_backend(name: str) -> TinyFeatures:
    if name != "tiny":
        raise KeyError(f"unknown feature backend {name!r}; registered: tiny")
    return TinyFeatures()


class TinyEmbedder:
    """One head of the tiny frame encoder behind the embedder interface."""

    def __init__(self, head: str) -> None:
        if head not in ("subject", "background"):
            raise ValueError(f"tiny head must be subject or background, got {head!r}")
        self.head, self.backend = head, get_feature_backend("tiny")
        self.identity = "tiny"
        self.cache_key = f"tiny-{head}"

    def embed_many(self, videos: list[np.ndarray]) -> list[np.ndarray]:
        pick = 0 if self.head == "subject" else 1
        sizes = [len(v) for v in videos]
        if len({v.shape[1:] for v in videos}) == 1:  # one batch across videos
            feats = self.backend.frame_features(np.concatenate(videos))[pick]
            return list(np.split(feats, np.cumsum(sizes)[:-1]))
        return [self.backend.frame_features(v)[pick] for v in videos]


@lru_cache(maxsize=2)
def _tiny_embedder(head: str) -> TinyEmbedder:
    return TinyEmbedder(head)


def get_embedder(name: str, head: str = "subject"):
    """``tiny`` (with the metric's head) or a real embedder by name (its weights resolved now, so a
    missing file fails here; the loaded model itself is cached per file)."""
    if name == "tiny":
        return _tiny_embedder(head)
    import harness.scorers.backends.real  # noqa: F401  (every real module registers its embedders in EMBEDDERS)
    from harness.scorers.backends.real.vit import EMBEDDERS

    if name not in EMBEDDERS:
        raise ValueError(f"unknown features {name!r}; registered: tiny, {', '.join(sorted(EMBEDDERS))}")
    embedder = EMBEDDERS[name]()
    embedder.cache_key = embedder.identity
    return embedder


class _FeatureCache:
    def __init__(self, videos) -> None:
        self.videos = list(videos)
        self.index = {id(v.frames): i for i, v in enumerate(self.videos)}
        self.features: dict[tuple[str, int], np.ndarray] = {}


_ACTIVE: list[_FeatureCache] = []


@contextmanager
def shared_features(videos):
    """Features computed inside are computed once per (embedder, video), batched over ``videos``."""
    _ACTIVE.append(_FeatureCache(videos))
    try:
        yield
    finally:
        _ACTIVE.pop()


def frame_features(embedder, frames: np.ndarray) -> np.ndarray:
    """(T, D) L2-normalised features of one video's frames, from the open cache when it knows them."""
    cache = _ACTIVE[-1] if _ACTIVE else None
    if cache is None or id(frames) not in cache.index:
        return embedder.embed_many([frames])[0]
    key = (embedder.cache_key, cache.index[id(frames)])
    if key not in cache.features:
        todo = [i for i in range(len(cache.videos)) if (embedder.cache_key, i) not in cache.features]
        for i, f in zip(todo, embedder.embed_many([cache.videos[i].frames for i in todo]), strict=True):
            cache.features[(embedder.cache_key, i)] = f
    return cache.features[key]
