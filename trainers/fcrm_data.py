"""FCRM's behaviour distributions besides the live policy: a FIFO replay buffer and an
offline source (paper 002, Sec. 5.1 "Data Collection", App. D.2).

Both hold clean samples x0 in the model's space with their conditions (first frame and
caption) and a reward computed once: at insert for replay, at start for offline data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from harness.data.source import clip_batch
from harness.data.video_io import frames_to_tensor
from harness.data.world import ClipSpec
from harness.models.base import Conditioning, ModelAdapter


class FCRMDataError(ValueError):
    """A replay or offline source cannot be used; the message names it and the fix."""


@dataclass
class Samples:
    """A batch of clean samples with their conditions, rewards and advantages."""

    x0: torch.Tensor  # (N, *latent)
    first_frames: torch.Tensor  # (N, C, H, W) pixels in [-1, 1]
    captions: list[str]
    rewards: torch.Tensor  # (N,) float64
    advantages: torch.Tensor  # (N,) float64 (zeros where not computed yet)
    specs: list[ClipSpec] | None = None

    def __len__(self) -> int:
        return self.x0.shape[0]

    def take(self, idx: torch.Tensor | list[int]) -> Samples:
        idx = torch.as_tensor(idx, dtype=torch.long)
        rows = idx.tolist()
        return Samples(self.x0[idx], self.first_frames[idx], [self.captions[i] for i in rows], self.rewards[idx],
                       self.advantages[idx], None if self.specs is None else [self.specs[i] for i in rows])

    def condition(self, adapter: ModelAdapter) -> Conditioning:
        return adapter.encode_condition(self.first_frames, self.captions)

    def state(self) -> dict[str, Any]:
        return {"x0": self.x0, "first_frames": self.first_frames, "captions": list(self.captions),
                "rewards": self.rewards, "advantages": self.advantages}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Samples:
        return cls(state["x0"], state["first_frames"], list(state["captions"]), state["rewards"],
                   state["advantages"])

    @staticmethod
    def cat(parts: list[Samples]) -> Samples:
        specs = None if any(p.specs is None for p in parts) else [s for p in parts for s in p.specs]  # type: ignore[union-attr]
        return Samples(torch.cat([p.x0 for p in parts]), torch.cat([p.first_frames for p in parts]),
                       [c for p in parts for c in p.captions], torch.cat([p.rewards for p in parts]),
                       torch.cat([p.advantages for p in parts]), specs)


def policy_rollouts(adapter: ModelAdapter, source: Any, split: str, pool: int, conditions: int,
                    per_condition: int, generator: torch.Generator, sampler: Any) -> tuple[Samples, list[int]]:
    """On-policy samples: ``conditions`` conditions drawn from the first ``pool`` of ``split`` of
    ``source`` (a preset: its real footage or its world; or a WorldConfig),
    ``per_condition`` seeded samples each, sampled in eval mode with the adapter's current
    weights (the caller swaps in behaviour weights if it has any). Rewards and advantages are
    zeros; returns the samples and each one's condition row (its group)."""
    from harness.sampling import sample_sharded

    idx = torch.randint(pool, (conditions,), generator=generator).tolist()
    batch = clip_batch(source, split, idx)
    rows = [i for i in range(conditions) for _ in range(per_condition)]
    seeds = torch.randint(2**31 - 1, (len(rows),), generator=generator).tolist()
    first, captions = batch.first_frames[rows], [batch.captions[i] for i in rows]
    was_training = adapter.model.training
    adapter.model.eval()
    try:  # every rank draws the same rows and seeds, samples its share, and gets all of them back
        x0 = sample_sharded(adapter, lambda r: adapter.encode_condition(first[r], [captions[i] for i in r]),
                            seeds, sampler)
    finally:
        adapter.model.train(was_training)
    zeros = torch.zeros(len(rows), dtype=torch.float64)
    return Samples(x0, first, captions, zeros, zeros.clone(), [batch.specs[i] for i in rows]), rows


ReplayFilter = Literal["all", "positive", "negative"]


@dataclass
class ReplayBuffer:
    """FIFO buffer of past rollouts. The reward (and the group advantage it had among its
    siblings) is fixed at insert; ``filter`` keeps only positive- or negative-advantage
    samples (the paper's replay-composition ablation); draws are uniform over the buffer."""

    capacity: int
    filter: ReplayFilter = "all"
    data: Samples | None = None
    inserted: int = 0  # samples ever inserted (after the filter)
    evicted: int = 0
    filtered_out: int = 0

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise FCRMDataError(f"replay capacity must be at least 1, got {self.capacity}")
        if self.filter not in ("all", "positive", "negative"):
            raise FCRMDataError(f"unknown replay filter {self.filter!r}; allowed: all, positive, negative")

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data)

    def insert(self, samples: Samples) -> int:
        keep = torch.ones(len(samples), dtype=torch.bool)
        if self.filter == "positive":
            keep = samples.advantages > 0
        elif self.filter == "negative":
            keep = samples.advantages < 0
        self.filtered_out += int((~keep).sum())
        if not keep.any():
            return 0
        new = samples.take(torch.nonzero(keep).squeeze(1))
        new.specs = None  # rewards are fixed at insert; the buffer keeps no ground truth
        self.data = new if self.data is None else Samples.cat([self.data, new])
        self.inserted += len(new)
        overflow = len(self.data) - self.capacity
        if overflow > 0:  # first in, first out
            self.data = self.data.take(torch.arange(overflow, len(self.data)))
            self.evicted += overflow
        return len(new)

    def draw(self, n: int, generator: torch.Generator) -> Samples:
        if self.data is None or len(self.data) == 0:
            raise FCRMDataError(f"the replay buffer is empty (filter {self.filter!r} kept no sample yet)")
        size = len(self.data)
        idx = torch.randperm(size, generator=generator)[:n] if n <= size else \
            torch.randint(size, (n,), generator=generator)
        return self.data.take(idx)

    def state_dict(self) -> dict[str, Any]:
        return {"data": None if self.data is None else self.data.state(), "inserted": self.inserted,
                "evicted": self.evicted, "filtered_out": self.filtered_out}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data = None if state["data"] is None else Samples.from_state(state["data"])
        self.inserted, self.evicted, self.filtered_out = state["inserted"], state["evicted"], state["filtered_out"]


def world_offline(source: Any, adapter: ModelAdapter, split: str, start: int, count: int,
                  chunk: int = 16) -> Samples:
    """Real clips of ``source`` as offline data (the role of the paper's MixKit videos): a preset's
    footage, or its (or a WorldConfig's) synthetic world; encoded ``chunk`` clips at a time."""
    batch = clip_batch(source, split, range(start, start + count))
    with torch.no_grad():
        x0 = torch.cat([adapter.encode_video(batch.videos[lo:lo + chunk]) for lo in range(0, count, chunk)])
    return Samples(x0, batch.first_frames, list(batch.captions), torch.zeros(count, dtype=torch.float64),
                   torch.zeros(count, dtype=torch.float64), list(batch.specs))


def file_offline(path: Path, adapter: ModelAdapter) -> Samples:
    """An .npz with ``captions`` (N,) and either ``latents`` (N, *latent) or ``frames``
    (N, T, H, W, 3) uint8, plus ``first_frames`` (N, H, W, 3) uint8 (default: frame 0)."""
    if not path.is_file():
        raise FCRMDataError(f"offline source {path} does not exist")
    def images(arr: np.ndarray) -> torch.Tensor:  # (N, H, W, 3) uint8 -> (N, 3, H, W) in [-1, 1]
        return torch.from_numpy(np.ascontiguousarray(arr)).float().div(127.5).sub(1.0).permute(0, 3, 1, 2)

    try:
        z = np.load(path, allow_pickle=False)
        captions = [str(c) for c in z["captions"]]
        if not captions:
            raise FCRMDataError(f"offline source {path} is empty: it holds no sample to train on")
        if "latents" in z.files:
            x0 = torch.from_numpy(z["latents"]).float()
            first = images(z["first_frames"])
        else:
            frames = z["frames"]
            x0 = adapter.encode_video(torch.stack([frames_to_tensor(f) for f in frames]))
            first = images(z["first_frames"] if "first_frames" in z.files else frames[:, 0])
    except (KeyError, ValueError, OSError, RuntimeError) as exc:
        if isinstance(exc, FCRMDataError):
            raise
        raise FCRMDataError(f"offline source {path} is not a readable FCRM offline file ({exc}); expected an "
                            ".npz with `captions` and `latents` + `first_frames`, or `frames`") from exc
    n = len(captions)
    if x0.shape[0] != n or first.shape[0] != n:
        raise FCRMDataError(f"offline source {path}: {n} captions but {x0.shape[0]} samples and "
                            f"{first.shape[0]} first frames")
    return Samples(x0, first, captions, torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))


def check_source(samples: Samples, adapter: ModelAdapter, what: str) -> None:
    """Fail at start, not mid-run: an empty source or samples of another model's shape."""
    if len(samples) == 0:
        raise FCRMDataError(f"{what} is empty: it holds no sample to train on")
    expected = tuple(adapter.latent_shape(1)[1:])
    if tuple(samples.x0.shape[1:]) != expected:
        raise FCRMDataError(f"{what} holds samples of shape {tuple(samples.x0.shape[1:])}, but the model denoises "
                            f"{expected}: they were encoded for another model or resolution; re-encode them with "
                            "this model's encode_video")
    if not torch.isfinite(samples.x0).all():
        bad = int((~torch.isfinite(samples.x0.flatten(1))).any(1).sum())
        raise FCRMDataError(f"{what} holds {bad} samples with non-finite values")
