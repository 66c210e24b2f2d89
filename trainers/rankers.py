"""Rankers: decide which of two videos of the same condition is preferred.

Online preference methods (Diffusion-APO's online and half-online stages) need one at
every step. ``oracle`` is the tiny world's ground-truth judge (mean of sprite
integrity and motion adherence); a real-model ranker (a vision-language model with
local weights) implements the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from harness.data.preferences import oracle_score
from harness.data.world import WorldConfig


class Ranker(ABC):
    name: ClassVar[str]

    @abstractmethod
    def scores(self, videos: list[np.ndarray], condition: object) -> list[float]:
        """A score per video of one condition (uint8 (T, H, W, 3) frames); higher is better."""

    def prefer(self, a: np.ndarray, b: np.ndarray, condition: object) -> int:
        """+1 if ``a`` is preferred, -1 if ``b``, 0 for a tie (no preference: the pair is skipped)."""
        sa, sb = self.scores([a, b], condition)
        if not (np.isfinite(sa) and np.isfinite(sb)) or sa == sb:
            return 0
        return 1 if sa > sb else -1


class OracleRanker(Ranker):
    name = "oracle"

    def __init__(self, world: WorldConfig):
        self._score = oracle_score(world)

    def scores(self, videos: list[np.ndarray], condition: object) -> list[float]:
        return [self._score(v, condition) for v in videos]


def get_ranker(name: str, world: WorldConfig) -> Ranker:
    if name == "oracle":
        return OracleRanker(world)
    raise ValueError(f"unknown ranker {name!r}; available: oracle")
