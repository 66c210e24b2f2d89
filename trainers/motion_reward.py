"""SHIFT's pixel-motion reward models (paper 000, Sec. 4.1 and App. C): two binary discriminators.

* ``imr`` (instantaneous): a ViT over the transport-residual and confidence maps of every
  consecutive frame pair (spatio-temporal patch tokens, CLS pooling); the paper's ViT-Base
  on SEA-RAFT residuals, here 2 layers of width 64 on the weights-free flow backend.
* ``lmr`` (long-term): a trajectory transformer over the tracked query points (one token per
  point, its whole trajectory descriptor embedded, CLS pooling); the paper's CoTracker3 head
  with 1024 queries, here 64 queries tracked by flow chaining.

Each outputs a raw logit, real (the data) versus generated (Eq. 7). The reward is that logit
clipped to ``[r_min, r_max]`` (or its sigmoid, the ablation). ``harness train-motion-reward``
pre-trains both on real clips against base-model samples from the same first frames and
captions (4 negatives per real clip); the shipped weights and held-out accuracies are in
harness/assets/tiny/rewards/{imr,lmr}.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from harness.config import PresetConfig, package_path
from harness.data.batches import split_batch
from harness.data.video_io import tensor_to_frames
from metrics.backends.tracking import FlowFields, get_tracker
from trainers.motion_features import batch_lmr, flow_fields, imr_features, lmr_input_dim

KINDS = ("imr", "lmr")
WEIGHTS_FILE, RECORD_FILE = "model.safetensors", "record.json"


def default_path(kind: str) -> str:
    return f"assets/tiny/rewards/{kind}"


def _encoder(width: int, depth: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class ResidualViT(nn.Module):
    """(B, T-1, C, H, W) residual/confidence maps -> (B,) logits."""

    def __init__(self, pairs: int, size: int, channels: int = 2, patch: int = 4, width: int = 64, depth: int = 2,
                 heads: int = 4):
        super().__init__()
        self.embed = nn.Conv2d(channels, width, patch, patch)
        n = (size // patch) ** 2
        self.pos_space = nn.Parameter(0.02 * torch.randn(1, 1, n, width))
        self.pos_time = nn.Parameter(0.02 * torch.randn(1, pairs, 1, width))
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.encoder = _encoder(width, depth, heads)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        tokens = self.embed(x.flatten(0, 1)).flatten(2).transpose(1, 2)  # (B*T, N, W)
        tokens = tokens.reshape(b, t, -1, tokens.shape[-1]) + self.pos_space + self.pos_time
        tokens = torch.cat([self.cls.expand(b, -1, -1), tokens.flatten(1, 2)], 1)
        return self.head(self.encoder(tokens)[:, 0]).squeeze(-1)


class TrajectoryTransformer(nn.Module):
    """(B, M, D) per-point trajectory descriptors -> (B,) logits (a set: no order among points)."""

    def __init__(self, in_dim: int, width: int = 64, depth: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.encoder = _encoder(width, depth, heads)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(x)], 1)
        return self.head(self.encoder(tokens)[:, 0]).squeeze(-1)


class MotionDiscriminator(nn.Module):
    """One pixel-motion reward model: its feature extractor (flow/tracker backend) and its net."""

    def __init__(self, kind: str, num_frames: int, size: int, tracker: str = "flow_chain",
                 tracker_options: dict[str, Any] | None = None, queries: int = 64, width: int = 64, depth: int = 2,
                 heads: int = 4, patch: int = 4):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown motion reward {kind!r}; allowed: {', '.join(KINDS)}")
        self.kind, self.queries = kind, queries
        self.spec = {"kind": kind, "num_frames": num_frames, "size": size, "tracker": tracker,
                     "tracker_options": tracker_options or {}, "queries": queries, "width": width, "depth": depth,
                     "heads": heads, "patch": patch}
        self.tracker = get_tracker(tracker, **(tracker_options or {}))
        self.net: nn.Module = (ResidualViT(num_frames - 1, size, 2, patch, width, depth, heads) if kind == "imr"
                               else TrajectoryTransformer(lmr_input_dim(num_frames), width, depth, heads))
        self.digest = ""

    @property
    def identity(self) -> str:
        return f"{self.kind}[{self.tracker.identity}]" + (f"[{self.digest}]" if self.digest else "")

    def fields(self, frames: list[np.ndarray]) -> list[FlowFields]:
        return [flow_fields(f, self.tracker) for f in frames]

    @torch.no_grad()
    def features(self, frames: list[np.ndarray], seeds: list[int],
                 fields: list[FlowFields] | None = None) -> torch.Tensor:
        """Features of uint8 (T, H, W, 3) videos; ``seeds`` fix each video's random LMR queries."""
        fields = fields or self.fields(frames)
        if self.kind == "imr":
            return torch.stack([imr_features(f, fl) for f, fl in zip(frames, fields, strict=True)])
        rngs = [np.random.default_rng(s) for s in seeds]
        return batch_lmr(frames, self.tracker, self.queries, rngs, fields)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def rewards_from_logits(logits: torch.Tensor, form: str = "logit", clip: tuple[float, float] = (-10.0, 10.0)):
    """The reward of Sec. 4.1: the raw logit clipped to [r_min, r_max], or its sigmoid (the ablation)."""
    if form == "sigmoid":
        return torch.sigmoid(logits)
    if form != "logit":
        raise ValueError(f"unknown reward form {form!r}; allowed: logit, sigmoid")
    return logits.clamp(*clip)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def save_discriminator(model: MotionDiscriminator, out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.net.state_dict().items()}, out / WEIGHTS_FILE)
    (out / RECORD_FILE).write_text(json.dumps({"spec": model.spec, **record}, indent=2))


def load_discriminator(kind: str, path: str | Path | None = None) -> MotionDiscriminator:
    """The pre-trained ``kind`` discriminator in ``path`` (default: the shipped one). A missing
    file is an error naming it and the command that builds it."""
    from trainers.rewards import RewardError

    directory = package_path(path or default_path(kind))
    for needed in (directory / WEIGHTS_FILE, directory / RECORD_FILE):
        if not needed.is_file():
            raise RewardError(f"{kind} motion reward model file missing: {needed}; build it with "
                              f"`harness train-motion-reward --preset tiny --kinds {kind} --out {directory.parent}`")
    record = json.loads((directory / RECORD_FILE).read_text())
    spec = dict(record["spec"])
    if spec.pop("kind") != kind:
        raise RewardError(f"{directory} holds a {record['spec']['kind']} model, not {kind}")
    try:
        model = MotionDiscriminator(kind, **spec)
    except KeyError as exc:  # a tracker/flow backend that is not registered here (e.g. CoTracker3 weights)
        raise RewardError(f"{kind} motion reward model in {directory}: {exc.args[0]}") from exc
    model.net.load_state_dict(load_file(directory / WEIGHTS_FILE))
    model.digest = file_digest(directory / WEIGHTS_FILE)
    return model.eval()


def ema_copy(model: MotionDiscriminator) -> MotionDiscriminator:
    """A frozen copy of the net sharing the feature extractor (OpenCV objects do not deep-copy)."""
    tracker, model.tracker = model.tracker, None
    try:
        twin = copy.deepcopy(model)
    finally:
        model.tracker = tracker
    twin.tracker = tracker
    twin.requires_grad_(False)
    return twin.eval()


# -- pre-training (real clips vs base samples from their first frames) -----------------------------
def pretraining_videos(preset: PresetConfig, clips: int, negatives: int, start: int,
                       show_progress: bool = True) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Real prompts-split clips and ``negatives`` base-model samples per clip from its first frame
    and caption: (videos, labels 1/0, owning clip index)."""
    from harness.models.tiny_wan import TinyWanAdapter
    from harness.sampling import sample

    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    adapter.model.eval()
    batch = split_batch(preset.world, "prompts", range(start, start + clips))
    videos = [tensor_to_frames(v) for v in batch.videos]
    labels, owners = [1] * clips, list(range(clips))
    for lo in tqdm(range(0, clips, 16), desc="base samples", disable=not show_progress):
        idx = list(range(lo, min(clips, lo + 16)))
        rows = [i for i in idx for _ in range(negatives)]
        cond = adapter.encode_condition(batch.first_frames[rows], [batch.captions[i] for i in rows])
        seeds = [int(np.random.SeedSequence([91, start + i, k]).generate_state(1)[0] & 0x7FFFFFFF)
                 for i in idx for k in range(negatives)]
        with torch.no_grad():
            videos += [tensor_to_frames(v) for v in sample(adapter, cond, seeds, preset.sampler)]
        labels += [0] * len(rows)
        owners += rows
    return videos, np.array(labels), np.array(owners)


def fit_discriminator(model: MotionDiscriminator, feats: torch.Tensor, labels: torch.Tensor, train: torch.Tensor,
                      steps: int, batch_size: int, lr: float, seed: int, show_progress: bool = True) -> None:
    """BCE (Eq. 7) on class-balanced batches (half real, half generated), cosine lr."""
    pos, neg = train[labels[train] == 1], train[labels[train] == 0]
    opt = torch.optim.AdamW(model.net.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    model.train()
    half = batch_size // 2
    for step in tqdm(range(steps), desc=f"train {model.kind}", disable=not show_progress):
        idx = torch.cat([pos[torch.randint(len(pos), (half,), generator=g)],
                         neg[torch.randint(len(neg), (half,), generator=g)]])
        loss = nn.functional.binary_cross_entropy_with_logits(model(feats[idx]), labels[idx].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        opt.step()
    model.eval()


def held_out_scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from scipy import stats

    pos, neg = logits[labels == 1], logits[labels == 0]
    # AUC = P(real logit > generated logit), from the Mann-Whitney U statistic.
    auc = float(stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))
    balanced = 0.5 * (float((pos > 0).mean()) + float((neg <= 0).mean()))
    return {"real": len(pos), "generated": len(neg), "auc": auc, "balanced_accuracy": balanced,
            "mean_logit_real": float(pos.mean()), "mean_logit_generated": float(neg.mean())}


def train_motion_rewards(preset: PresetConfig, out: Path, kinds: list[str], *, clips: int = 192, negatives: int = 4,
                         start: int = 200_000, steps: int = 400, batch_size: int = 64, lr: float = 1e-3,
                         held_out: float = 0.2, seed: int = 0, show_progress: bool = True) -> dict[str, dict]:
    """Pre-train the discriminators (Sec. 5 "Reward model pre-training"); whole clips (a real clip
    with its 4 negatives) are held out to report generalisation."""
    t0 = time.time()
    videos, labels_np, owners = pretraining_videos(preset, clips, negatives, start, show_progress)
    sampled_s = time.time() - t0
    labels = torch.tensor(labels_np)
    test = torch.tensor(owners >= int(clips * (1 - held_out)))
    train_idx, test_idx = torch.nonzero(~test).squeeze(1), torch.nonzero(test).squeeze(1)
    seeds = [int(np.random.SeedSequence([17, i]).generate_state(1)[0] & 0x7FFFFFFF) for i in range(len(videos))]
    res, frames = preset.world.resolution, preset.world.num_frames
    records: dict[str, dict] = {}
    fields = None
    for kind in kinds:
        torch.manual_seed(seed)
        model = MotionDiscriminator(kind, frames, res)
        if fields is None:  # both kinds share one flow pass per video
            fields = [flow_fields(v, model.tracker) for v in tqdm(videos, desc="flow", disable=not show_progress)]
        feats = model.features(videos, seeds, fields)
        fit_discriminator(model, feats, labels, train_idx, steps, batch_size, lr, seed, show_progress)
        with torch.no_grad():
            logits = model(feats[test_idx]).numpy()
        record = {
            "what": f"tiny-world SHIFT {kind.upper()} discriminator: real prompts-split clips vs base-model samples",
            "reproduce": f"harness train-motion-reward --preset {preset.name} --kinds {kind} --out <dir> --force",
            "base_model": preset.base_checkpoint, "sampler": preset.sampler.model_dump(),
            "data": {"split": "prompts", "clips": [start, start + clips], "negatives_per_clip": negatives,
                     "videos": len(videos), "held_out_clips": int(clips * held_out)},
            "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "loss": "BCE, balanced",
                      "sampling_seconds": round(sampled_s, 1), "seconds": round(time.time() - t0, 1)},
            "held_out": held_out_scores(logits, labels_np[test_idx.numpy()]),
        }
        save_discriminator(model, out / kind, record)
        records[kind] = record
    return records
