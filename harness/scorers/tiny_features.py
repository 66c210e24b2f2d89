"""Tiny learned feature extractors of the tiny world (weights shipped, no downloads).

* ``FrameEncoder``: per-frame features for the consistency dimensions. Two heads,
  trained with supervision from the world's ground truth: a *subject* embedding
  (which colour/shape/size sprites are where: the role DINO plays in VBench) and a
  *background* embedding (the clean background texture: the role of CLIP/DreamSim).
* ``ClipClassifier``: per-clip features for FVD: a small 3D CNN trained to read the
  sprites' motion (direction, speed) and the camera pan: the role I3D plays.

Both are trained by ``harness build features`` (harness/build/features.py) on real clips of
the world (pretrain and finetune splits) and saved as safetensors with a JSON training record.
Features are what the metrics read; the heads only exist to train them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from harness.data.world import (
    COLOURS,
    DIRECTIONS,
    PAN_DIRECTIONS,
    SHAPES,
    SIZES,
    SPEEDS,
)

COLOUR_NAMES = list(COLOURS)
MOTION_CLASSES = ["still", *[f"{d}-{s}" for d in DIRECTIONS for s in SPEEDS if s != "still"]]
PAN_CLASSES = ["none", *PAN_DIRECTIONS]


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.GELU())


class FrameEncoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> subject (B, 64) and background (B, 32) embeddings."""

    def __init__(self, width: int = 32, subject_dim: int = 64, background_dim: int = 32):
        super().__init__()
        self.trunk = nn.Sequential(
            _block(3, width, 1), _block(width, width, 2), _block(width, 2 * width, 1),
            _block(2 * width, 2 * width, 2), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * width * 16, 128), nn.GELU(),
        )
        self.subject = nn.Linear(128, subject_dim)
        self.background = nn.Linear(128, background_dim)
        n = len(COLOUR_NAMES)
        # training heads: presence, shape, size, position per colour; background image at 4x4
        self.head_subject = nn.Linear(subject_dim, n * (1 + len(SHAPES) + len(SIZES) + 2))
        self.head_background = nn.Linear(background_dim, 4 * 4 * 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.subject(h), self.background(h)


class ClipClassifier(nn.Module):
    """(B, 3, T, H, W) in [-1, 1] -> clip features (B, 32)."""

    def __init__(self, width: int = 32, feature_dim: int = 32):
        super().__init__()

        def block(cin: int, cout: int, stride: tuple[int, int, int]) -> nn.Sequential:
            return nn.Sequential(nn.Conv3d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.GELU())

        self.trunk = nn.Sequential(
            block(3, width, (1, 1, 1)), block(width, width, (1, 2, 2)),
            block(width, 2 * width, (2, 1, 1)), block(2 * width, 2 * width, (2, 2, 2)),
            nn.AdaptiveAvgPool3d((2, 2, 2)), nn.Flatten(), nn.Linear(2 * width * 8, 128), nn.GELU(),
        )
        self.features = nn.Linear(128, feature_dim)
        self.head = nn.Linear(feature_dim, len(COLOUR_NAMES) * (1 + len(MOTION_CLASSES)) + len(PAN_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.trunk(x))


def load_features(directory: Path) -> tuple[FrameEncoder, ClipClassifier]:
    models = (FrameEncoder(), ClipClassifier())
    for name, model in zip(("frame_encoder", "clip_classifier"), models, strict=True):
        path = directory / f"{name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"feature weights missing: {path}; re-create them with "
                "`harness build features --preset tiny --out <dir>`")
        model.load_state_dict(load_file(path), strict=True)
        model.eval()
    return models
