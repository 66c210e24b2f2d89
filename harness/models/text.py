"""A small deterministic caption encoder for the tiny world.

Each word maps to a fixed unit-variance vector drawn from a generator seeded by
the word's SHA-256, plus a sinusoidal position code, so the same caption always
gives the same embedding on every machine, with no weights to ship or train. The
model's own text projection (Wan's ``condition_embedder``) learns what to do with
them. The empty caption (used for classifier-free guidance) encodes to zeros.
"""

from __future__ import annotations

import hashlib
import math

import torch


class HashCaptionEncoder:
    def __init__(self, dim: int = 32, max_tokens: int = 32):
        self.dim, self.max_tokens = dim, max_tokens
        self._cache: dict[str, torch.Tensor] = {}
        pos = torch.arange(max_tokens, dtype=torch.float64)[:, None]
        freq = torch.exp(-math.log(100.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        pe = torch.zeros(max_tokens, dim, dtype=torch.float64)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
        self._positions = (0.5 * pe).float()

    @staticmethod
    def tokenize(caption: str) -> list[str]:
        return caption.lower().replace(",", " ,").split()

    def _word(self, word: str) -> torch.Tensor:
        if word not in self._cache:
            seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little") & (2**63 - 1)
            g = torch.Generator().manual_seed(seed)
            self._cache[word] = torch.randn(self.dim, generator=g, dtype=torch.float64).float()
        return self._cache[word]

    def __call__(self, captions: list[str]) -> torch.Tensor:
        """(B, max_tokens, dim) embeddings; padding and the empty caption are zeros."""
        out = torch.zeros(len(captions), self.max_tokens, self.dim)
        for b, caption in enumerate(captions):
            words = self.tokenize(caption)
            if len(words) > self.max_tokens:
                raise ValueError(
                    f"caption has {len(words)} tokens, more than max_tokens={self.max_tokens}: {caption!r}"
                )
            for i, w in enumerate(words):
                out[b, i] = self._word(w) + self._positions[i]
        return out
