"""World clips -> model-ready tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from harness.data.video_io import frames_to_tensor
from harness.data.world import Clip, ClipSpec, WorldConfig, make_clip


@dataclass
class ClipBatch:
    videos: torch.Tensor  # (B, 3, T, H, W) in [-1, 1]
    captions: list[str]
    specs: list[ClipSpec]
    frames: np.ndarray  # (B, T, H, W, 3) uint8

    @property
    def first_frames(self) -> torch.Tensor:
        return self.videos[:, :, 0]


def batch_of(clips: Sequence[Clip]) -> ClipBatch:
    return ClipBatch(
        videos=torch.stack([frames_to_tensor(c.frames) for c in clips]),
        captions=[c.caption for c in clips],
        specs=[c.spec for c in clips],
        frames=np.stack([c.frames for c in clips]),
    )


def split_batch(cfg: WorldConfig, split: str, indices: Sequence[int]) -> ClipBatch:
    return batch_of([make_clip(cfg, split, int(i)) for i in indices])
