"""Feature extractors for the consistency dimensions and FVD, by name.

``tiny``: the tiny world's learned extractors (harness.tiny_features), shipped with
the package. Real backends (DINO, CLIP, DreamSim, I3D, VideoMAE) register here too.
Models are loaded once per process and shared by every metric that uses them.
"""

from __future__ import annotations

import hashlib
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
        from harness.tiny_features import load_features

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
