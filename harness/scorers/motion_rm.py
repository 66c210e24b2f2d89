"""SHIFT's pixel-motion reward models (paper 000, Sec. 4.1 and App. C): two binary discriminators.

* ``imr`` (instantaneous): a ViT over the transport-residual and confidence maps of every
  consecutive frame pair (spatio-temporal patch tokens, CLS pooling); the paper's ViT-Base
  on SEA-RAFT residuals, here 2 layers of width 64 on the weights-free flow backend.
* ``lmr`` (long-term): a trajectory transformer over the tracked query points (one token per
  point, its whole trajectory descriptor embedded, CLS pooling); the paper's CoTracker3 head
  with 1024 queries, here 64 queries tracked by flow chaining.

Each outputs a raw logit, real (the data) versus generated (Eq. 7). The reward is that logit
clipped to ``[r_min, r_max]`` (or its sigmoid, the ablation). harness/build/motion_rm.py
(``harness build motion-rm``) pre-trains both on real clips against base-model samples from
the same first frames and captions (4 negatives per real clip); the shipped weights and held-out
accuracies are in harness/assets/tiny/rewards/{imr,lmr}. SHIFT (trainers/shift.py) keeps
training them online.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from harness.config import PresetConfig, package_path
from harness.data.source import clip_length, frame_size
from harness.scorers.backends.tracking import FlowFields, get_tracker
from harness.scorers.errors import RewardError
from harness.scorers.motion_features import batch_lmr, flow_fields, imr_features, lmr_input_dim

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
                raise RewardError(f"the {self.kind} reward model reads {want[0]} frames of {want[1]}x{want[2]} px, "
                                  f"got {f.shape[0]} of {f.shape[1]}x{f.shape[2]}; train one for this clip shape "
                                  "with `harness build motion-rm --preset <preset>`")
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
    for needed in (directory / WEIGHTS_FILE, directory / RECORD_FILE):
        if not needed.is_file():
            raise RewardError(f"{kind} motion reward model file missing: {needed}; build it with "
                              f"`harness build motion-rm --preset tiny --kinds {kind} --out {directory.parent}`")
    record = json.loads((directory / RECORD_FILE).read_text())
    if record["spec"]["kind"] != kind:
        raise RewardError(f"{directory} holds a {record['spec']['kind']} model, not {kind}")
    return record


def clip_shape_problem(kind: str, path: str | None, preset: PresetConfig, where: str) -> str | None:
    """Why the ``kind`` discriminator in ``path`` (default: the shipped one) cannot score ``preset``'s
    clips, from its record alone (None: it can)."""
    try:
        spec = _record(kind, _directory(kind, path))["spec"]
    except RewardError as exc:
        return f"{where}: {exc}"
    have, want = (spec["num_frames"], *_hw(spec["size"])), (clip_length(preset), *frame_size(preset))
    if have == want:
        return None
    return (f"{where}: the {kind} reward model reads {have[0]} frames of {have[1]}x{have[2]} px, preset "
            f"{preset.name!r} generates {want[0]} of {want[1]}x{want[2]}; train one with `harness "
            f"build motion-rm --preset {preset.name} --kinds {kind}` and set {where}.reward_paths")


def load_discriminator(kind: str, path: str | Path | None = None) -> MotionDiscriminator:
    """The pre-trained ``kind`` discriminator in ``path`` (default: the shipped one). A missing
    file is an error naming it and the command that builds it."""
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
