"""Rankers: decide which of two videos of the same condition is preferred.

Online preference methods (Diffusion-APO's online and half-online stages) need one at
every step. ``oracle`` is the tiny world's ground-truth judge (mean of sprite
integrity and motion adherence); ``LabelRanker`` answers from imported human labels.
A vision-language ranker with local weights would implement the same interface (not
yet here: transformers' video processors need torchvision, which the CPU install
leaves out).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from harness.data.preferences import PairSet, oracle_score
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


class LabelRanker(Ranker):
    """Imported human labels: the preference of a pair is looked up by the videos' content.

    Built from a pair set (e.g. ``import_pairs`` of a labels file); a pair it has no label
    for is a tie (skipped), never a guess.
    """

    name = "labels"

    def __init__(self, pairs: PairSet):
        self._labels: dict[tuple[str, str], int] = {}
        for w, lo in zip(pairs.chosen, pairs.rejected, strict=True):
            self._labels[(_digest(w), _digest(lo))] = 1
            self._labels[(_digest(lo), _digest(w))] = -1
        self.unknown = 0

    def scores(self, videos: list[np.ndarray], condition: object) -> list[float]:
        raise NotImplementedError("human labels are pairwise: use prefer()")

    def prefer(self, a: np.ndarray, b: np.ndarray, condition: object) -> int:
        label = self._labels.get((_digest(a), _digest(b)), 0)
        self.unknown += label == 0
        return label


def _digest(video: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(video).tobytes()).hexdigest()


def get_ranker(name: str, world: WorldConfig) -> Ranker:
    if name == "oracle":
        return OracleRanker(world)
    raise ValueError(f"unknown ranker {name!r} for online ranking; available: oracle "
                     "(human labels rank only the pairs they label: LabelRanker)")
