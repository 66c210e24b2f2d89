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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from harness.config import PresetConfig, package_path
from harness.data.source import clip_batch, clip_length, dataset_for, frame_size
from harness.data.video_io import tensor_to_frames
from metrics.backends.tracking import FlowFields, get_tracker
from trainers.motion_features import batch_lmr, flow_fields, imr_features, lmr_input_dim

KINDS = ("imr", "lmr")
WEIGHTS_FILE, RECORD_FILE = "model.safetensors", "record.json"


def default_path(kind: str) -> str:
    return f"assets/tiny/rewards/{kind}"


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    """A frame size given as one side (square) or (height, width)."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def default_map_size(height: int, width: int, short: int = 32, patch: int = 4) -> tuple[int, int] | None:
    """The working size of the motion features for frames of ``height`` x ``width``: native up to a
    shorter side of ``short`` px, else scaled to it, the aspect kept, sides multiples of ``patch``. The
    paper runs SEA-RAFT and a ViT-Base on full frames; a small fixed map keeps the IMR's tokens (T-1 x
    map / patch^2) and the weights-free flow affordable at 320x576 or 480x832."""
    if min(height, width) <= short:
        return None
    scale = short / min(height, width)
    return (max(patch, int(height * scale) // patch * patch), max(patch, int(width * scale) // patch * patch))


def _encoder(width: int, depth: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class ResidualViT(nn.Module):
    """(B, T-1, C, H, W) residual/confidence maps -> (B,) logits."""

    def __init__(self, pairs: int, size: int | tuple[int, int], channels: int = 2, patch: int = 4, width: int = 64,
                 depth: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Conv2d(channels, width, patch, patch)
        h, w = _hw(size)
        n = (h // patch) * (w // patch)
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

    def __init__(self, kind: str, num_frames: int, size: int | Sequence[int], tracker: str = "flow_chain",
                 tracker_options: dict[str, Any] | None = None, queries: int = 64, width: int = 64, depth: int = 2,
                 heads: int = 4, patch: int = 4, map_size: Sequence[int] | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown motion reward {kind!r}; allowed: {', '.join(KINDS)}")
        self.kind, self.queries = kind, queries
        self.num_frames, self.frame_size = num_frames, _hw(size)
        self.map_size = None if map_size is None else _hw(map_size)  # None: features at the frames' own size
        self.spec = {"kind": kind, "num_frames": num_frames, "size": size, "tracker": tracker,
                     "tracker_options": tracker_options or {}, "queries": queries, "width": width, "depth": depth,
                     "heads": heads, "patch": patch, **({"map_size": list(self.map_size)} if self.map_size else {})}
        self.tracker = get_tracker(tracker, **(tracker_options or {}))
        maps = self.map_size or self.frame_size
        self.net: nn.Module = (ResidualViT(num_frames - 1, maps, 2, patch, width, depth, heads) if kind == "imr"
                               else TrajectoryTransformer(lmr_input_dim(num_frames), width, depth, heads))
        self.digest = ""

    @property
    def identity(self) -> str:
        return f"{self.kind}[{self.tracker.identity}]" + (f"[{self.digest}]" if self.digest else "")

    @property
    def shared_key(self) -> tuple[str, tuple[int, int] | None]:
        """Discriminators with equal keys read the same flow fields (one flow pass per video)."""
        return self.tracker.identity, self.map_size

    def prepare(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """The videos at the working size; a video of another shape than trained for is an error."""
        want = (self.num_frames, *self.frame_size)
        for f in frames:
            if tuple(f.shape[:3]) != want:
                from trainers.rewards import RewardError

                raise RewardError(f"the {self.kind} reward model reads {want[0]} frames of {want[1]}x{want[2]} px, "
                                  f"got {f.shape[0]} of {f.shape[1]}x{f.shape[2]}; train one for this clip shape "
                                  "with `harness train-motion-reward --preset <preset>`")
        if self.map_size is None:
            return frames
        import cv2

        h, w = self.map_size
        return [np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA) for x in f]) for f in frames]

    def fields(self, frames: list[np.ndarray]) -> list[FlowFields]:
        return [flow_fields(f, self.tracker) for f in self.prepare(frames)]

    @torch.no_grad()
    def features(self, frames: list[np.ndarray], seeds: list[int],
                 fields: list[FlowFields] | None = None) -> torch.Tensor:
        """Features of uint8 (T, H, W, 3) videos (at the working size); ``seeds`` fix each video's
        random LMR queries; ``fields``: this model's ``fields`` of the same videos, if computed."""
        frames = self.prepare(frames)
        fields = fields or [flow_fields(f, self.tracker) for f in frames]
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


def _directory(kind: str, path: str | Path | None) -> Path:
    # A relative path names a user's directory when it exists from here, else one in the package (the shipped models).
    return Path(path) if path and Path(path).is_dir() else package_path(path or default_path(kind))


def _record(kind: str, directory: Path) -> dict[str, Any]:
    """The training record of the ``kind`` discriminator in ``directory``; a missing file is an error
    naming it and the command that builds it."""
    from trainers.rewards import RewardError

    for needed in (directory / WEIGHTS_FILE, directory / RECORD_FILE):
        if not needed.is_file():
            raise RewardError(f"{kind} motion reward model file missing: {needed}; build it with "
                              f"`harness train-motion-reward --preset tiny --kinds {kind} --out {directory.parent}`")
    record = json.loads((directory / RECORD_FILE).read_text())
    if record["spec"]["kind"] != kind:
        raise RewardError(f"{directory} holds a {record['spec']['kind']} model, not {kind}")
    return record


def clip_shape_problem(kind: str, path: str | None, preset: PresetConfig, where: str) -> str | None:
    """Why the ``kind`` discriminator in ``path`` (default: the shipped one) cannot score ``preset``'s
    clips, from its record alone (None: it can)."""
    from trainers.rewards import RewardError

    try:
        spec = _record(kind, _directory(kind, path))["spec"]
    except RewardError as exc:
        return f"{where}: {exc}"
    have, want = (spec["num_frames"], *_hw(spec["size"])), (clip_length(preset), *frame_size(preset))
    if have == want:
        return None
    return (f"{where}: the {kind} reward model reads {have[0]} frames of {have[1]}x{have[2]} px, preset "
            f"{preset.name!r} generates {want[0]} of {want[1]}x{want[2]}; train one with `harness "
            f"train-motion-reward --preset {preset.name} --kinds {kind}` and set {where}.reward_paths")


def load_discriminator(kind: str, path: str | Path | None = None) -> MotionDiscriminator:
    """The pre-trained ``kind`` discriminator in ``path`` (default: the shipped one). A missing
    file is an error naming it and the command that builds it."""
    from trainers.rewards import RewardError

    directory = _directory(kind, path)
    record = _record(kind, directory)
    spec = dict(record["spec"])
    spec.pop("kind")
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
def pretraining_videos(preset: PresetConfig, split: str, clips: int, negatives: int, start: int,
                       show_progress: bool = True) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Real clips ``start ..`` of ``split`` and ``negatives`` base-model samples per clip from its
    first frame and caption: (videos, labels 1/0, owning clip index). The base model is the
    preset's (a real family, or the tiny model); samples are drawn a few clips at a time
    (``eval.batch_size`` videos per call, 64 on the tiny preset)."""
    from harness.runner import base_adapter
    from harness.sampling import sample

    adapter = base_adapter(preset)
    adapter.model.eval()
    batch = clip_batch(preset, split, range(start, start + clips))
    videos = [tensor_to_frames(v) for v in batch.videos]
    labels, owners = [1] * clips, list(range(clips))
    per_call = max(1, (preset.eval.batch_size or 64) // negatives)  # clips per sampling call
    for lo in tqdm(range(0, clips, per_call), desc="base samples", disable=not show_progress):
        idx = list(range(lo, min(clips, lo + per_call)))
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
                         held_out: float = 0.2, seed: int = 0, split: str = "prompts",
                         map_size: Sequence[int] | None = None,
                         show_progress: bool = True) -> dict[str, dict]:
    """Pre-train the discriminators (Sec. 5 "Reward model pre-training") for the preset's clip
    shape; whole clips (a real clip with its 4 negatives) are held out to report generalisation.
    On real footage (a finite split) the clips are the split's first ``clips`` (each once), and
    the features work at ``map_size`` (default: ``default_map_size`` of the frames)."""
    num_frames, (height, width) = clip_length(preset), frame_size(preset)
    if preset.data is not None:
        from trainers.rewards import RewardError

        try:
            size = len(dataset_for(preset).split(split))
        except KeyError as exc:
            raise RewardError(f"motion reward pre-training: {exc.args[0]}; choose one with --split") from exc
        start, clips = 0, min(clips, size)
        if clips < 5:
            raise RewardError(f"split {split!r} of {preset.data.root} has {size} clips; the discriminators need at "
                              "least 5 (one held out); choose a larger split with --split")
    map_size = map_size if map_size is not None else default_map_size(height, width)
    t0 = time.time()
    videos, labels_np, owners = pretraining_videos(preset, split, clips, negatives, start, show_progress)
    sampled_s = time.time() - t0
    labels = torch.tensor(labels_np)
    test = torch.tensor(owners >= int(clips * (1 - held_out)))
    train_idx, test_idx = torch.nonzero(~test).squeeze(1), torch.nonzero(test).squeeze(1)
    seeds = [int(np.random.SeedSequence([17, i]).generate_state(1)[0] & 0x7FFFFFFF) for i in range(len(videos))]
    # The tiny world's square clips keep their one-side size in the record (the shipped models' format).
    size: int | list[int] = height if preset.data is None and height == width else [height, width]
    records: dict[str, dict] = {}
    fields = None
    for kind in kinds:
        torch.manual_seed(seed)
        model = MotionDiscriminator(kind, num_frames, size, map_size=map_size)
        if fields is None:  # both kinds share one flow pass per video
            fields = model.fields(videos)
        feats = model.features(videos, seeds, fields)
        fit_discriminator(model, feats, labels, train_idx, steps, batch_size, lr, seed, show_progress)
        with torch.no_grad():
            logits = model(feats[test_idx]).numpy()
        record = {
            "what": f"{'tiny-world' if preset.data is None else preset.name} SHIFT {kind.upper()} discriminator: "
                    f"real {split}-split clips vs base-model samples",
            "reproduce": f"harness train-motion-reward --preset {preset.name} --split {split} --kinds {kind} "
                         "--out <dir> --force",
            "base_model": preset.adapter.path if preset.adapter is not None else preset.base_checkpoint,
            "sampler": preset.sampler.model_dump(),
            "data": {"split": split, "clips": [start, start + clips], "negatives_per_clip": negatives,
                     "videos": len(videos), "held_out_clips": int(clips * held_out)},
            "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "loss": "BCE, balanced",
                      "sampling_seconds": round(sampled_s, 1), "seconds": round(time.time() - t0, 1)},
            "held_out": held_out_scores(logits, labels_np[test_idx.numpy()]),
        }
        save_discriminator(model, out / kind, record)
        records[kind] = record
    return records
