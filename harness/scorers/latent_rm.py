"""The latent reward model: a frozen diffusion backbone as feature extractor + a small head.

As FCRM's reward model (Sec. 5.1), it scores x0 in the generator's own space: the frozen
base transformer runs on x0 at a fixed noise level, the output of one intermediate block
(spatio-temporal tokens) is read by a forward hook (the blocks after it are skipped), and
a query-attention head cross-attends to those tokens together with the caption tokens and
maps the pooled result to a scalar. Only the head is trained, on rater labels of tiny-world
videos (base-model samples at 16 and 4 sampler steps, and real clips; harness/data/raters.py: a
partial, noisy view, not the evaluation oracle), then frozen. It is the training judge of every
preference and reward method on the tiny preset; evaluation keeps the exact oracle.

The fitting jobs live in harness/build/latent_rm.py (`harness build latent-rm`); the shipped weights
and their training record (held-out agreement with the raters and with the oracle) live in
harness/assets/tiny/rewards/latent_rm.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from harness.config import package_path
from harness.models.base import Conditioning, ModelAdapter, weights_digest
from harness.models.tiny_wan import WEIGHTS_NAME, TinyWanAdapter
from harness.scorers.errors import RewardError

DEFAULT_PATH = "assets/tiny/rewards/latent_rm"
HEAD_FILE, RECORD_FILE = "head.safetensors", "record.json"


class _Stop(Exception):
    """Raised by the feature hook: the blocks after the read-out are not needed."""


class RewardHead(nn.Module):
    """Learned queries cross-attend to visual tokens and caption tokens -> scalar."""

    def __init__(self, feature_dim: int, text_dim: int, width: int = 64, queries: int = 4, heads: int = 4):
        super().__init__()
        self.visual = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, width))
        self.text = nn.Linear(text_dim, width)
        self.kind = nn.Parameter(torch.zeros(2, width))  # visual / text token type embeddings
        self.queries = nn.Parameter(0.02 * torch.randn(queries, width))
        self.attend = nn.MultiheadAttention(width, heads, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(queries * width), nn.Linear(queries * width, width), nn.SiLU(),
                                 nn.Linear(width, 1))

    def forward(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        pad = text.abs().sum(-1) == 0  # the caption encoder pads with zeros
        tokens = torch.cat([self.visual(features) + self.kind[0], self.text(text) + self.kind[1]], dim=1)
        visible = torch.zeros(pad.shape[0], features.shape[1], dtype=torch.bool, device=pad.device)
        mask = torch.cat([visible, pad], dim=1)
        q = self.queries.expand(features.shape[0], -1, -1)
        pooled, _ = self.attend(q, tokens, tokens, key_padding_mask=mask, need_weights=False)
        return self.out(pooled.flatten(1)).squeeze(-1)


def block_features(backbone: ModelAdapter, x0: torch.Tensor, cond: Conditioning, layer: int,
                   sigma: float) -> torch.Tensor:
    """(B, tokens, width) output of transformer block ``layer`` of ``backbone`` on x0 at noise level
    ``sigma``; the blocks after it are not run."""
    blocks = getattr(backbone.model, "blocks", None)
    if blocks is None:
        raise RewardError(f"latent_rm reads the tokens of a transformer block, and {type(backbone).__name__} has "
                          "no `blocks` (a UNet); use reward aesthetic or luminance for this family")
    if not 0 <= layer < len(blocks):
        raise RewardError(f"latent_rm reads block {layer}, but the model has {len(blocks)} blocks "
                          f"(0..{len(blocks) - 1})")
    captured: list[torch.Tensor] = []

    def hook(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = blocks[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            backbone.predict(x0, torch.full((x0.shape[0],), sigma, device=x0.device), cond)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0].float()


class LatentRewardModel:
    """A frozen head on a frozen backbone's block features. ``shared``: the backbone is the policy
    being trained (a real family, whose weights are too large to hold twice), read with its LoRA
    disabled, i.e. as the base model the head was fitted on, and in eval mode."""

    def __init__(self, backbone: ModelAdapter, head: RewardHead, layer: int, sigma: float, digest: str = "",
                 shared: bool = False):
        self.backbone, self.head, self.layer, self.sigma, self.digest = backbone, head, layer, sigma, digest
        self.shared = shared
        if not shared:
            backbone.model.requires_grad_(False).eval()
        head.requires_grad_(False).eval()

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        if not self.shared:
            yield
            return
        model, was_training = self.backbone.model, self.backbone.model.training
        model.eval()
        try:
            with self.backbone.reference() if self.backbone.has_lora else contextlib.nullcontext():
                yield
        finally:
            model.train(was_training)

    def features(self, x0: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        with self._frozen():
            return block_features(self.backbone, x0, cond, self.layer, self.sigma)

    @torch.no_grad()
    def score(self, x0: torch.Tensor, cond: Conditioning, batch_size: int = 64) -> torch.Tensor:
        self.head.to(x0.device)
        out = [self.head(self.features(x0[i:i + batch_size], cond.index(slice(i, i + batch_size))),
                         cond.text[i:i + batch_size].float()) for i in range(0, x0.shape[0], batch_size)]
        return torch.cat(out)


def video_scorer(rm: LatentRewardModel, batch_size: int = 64):
    """The reward model as a batch judge of uint8 videos: (videos (N, T, H, W, 3), first frames (N, H, W, 3),
    captions) -> (N,) scores, read from what a model sees (no condition spec, no oracle)."""
    from harness.data.video_io import frames_to_tensor

    def score(videos: np.ndarray, first_frames: np.ndarray, captions: list[str]) -> np.ndarray:
        out = []
        for lo in range(0, len(videos), batch_size):
            hi = min(len(videos), lo + batch_size)
            x0 = rm.backbone.encode_video(torch.stack([frames_to_tensor(v) for v in videos[lo:hi]]))
            first = torch.stack([frames_to_tensor(f[None])[:, 0] for f in first_frames[lo:hi]])
            cond = rm.backbone.encode_condition(first, list(captions[lo:hi]))
            out.append(rm.score(x0, cond).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    return score


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _directory(path: str | Path | None) -> Path:
    # A relative path that exists from here is the user's (runs/...); otherwise a shipped asset.
    return Path(path) if path and Path(path).exists() else package_path(path or DEFAULT_PATH)


def missing_file(path: str | Path | None) -> str | None:
    """The reward model file missing from ``path`` (default: the shipped one) with the command that
    builds it, or None when both are there."""
    directory = _directory(path)
    for needed in (directory / HEAD_FILE, directory / RECORD_FILE):
        if not needed.is_file():
            return (f"latent reward model file missing: {needed}; build it with `harness build latent-rm --preset tiny "
                    f"--out {directory}` (a real family: `harness build latent-rm --preset <name> --pairs footage "
                    "--out DIR`)")
    return None


def load_reward_model(path: str | Path | None = None, adapter: ModelAdapter | None = None) -> LatentRewardModel:
    """The head in ``path`` (default: the shipped one) on the backbone its record names; the
    backbone's weights must be the ones it was trained on (checked by digest). A real family's
    head (``harness build latent-rm --pairs``) reads ``adapter``, the policy, with its LoRA disabled."""
    directory = _directory(path)
    head_file, record_file = directory / HEAD_FILE, directory / RECORD_FILE
    if problem := missing_file(path):
        raise RewardError(problem)
    record = json.loads(record_file.read_text())
    if "family" in record:
        return _load_shared(directory, record, adapter)
    base_dir = package_path(record["backbone"])
    if not (base_dir / WEIGHTS_NAME).is_file():
        raise RewardError(f"the latent reward model's backbone is missing: {base_dir / WEIGHTS_NAME}")
    digest = file_digest(base_dir / WEIGHTS_NAME)
    if record["backbone_digest"] != digest:
        raise RewardError(f"the latent reward model in {directory} was trained on the features of other backbone "
                          f"weights ({record['backbone_digest']}; {base_dir} holds {digest}); rebuild it with "
                          f"`harness build latent-rm --out {directory} --force`")
    backbone = TinyWanAdapter.load(base_dir)
    head = RewardHead(**record["head"])
    head.load_state_dict(load_file(head_file))
    return LatentRewardModel(backbone, head, record["layer"], record["sigma"], digest=file_digest(head_file))


def _load_shared(directory: Path, record: dict, adapter: ModelAdapter | None) -> LatentRewardModel:
    if adapter is None:
        raise RewardError(f"the latent reward model in {directory} reads the policy's own frozen base model "
                          f"({record['family']}); it needs the trainer's adapter")
    digest = weights_digest(adapter)
    if digest != record["backbone_digest"]:
        raise RewardError(f"the latent reward model in {directory} was fitted on the features of "
                          f"{record['backbone']} ({record['family']}, weights {record['backbone_digest']}), not on "
                          f"this model (weights {digest}); rebuild it with `{record['reproduce']}`")
    head = RewardHead(**record["head"])
    head.load_state_dict(load_file(directory / HEAD_FILE))
    return LatentRewardModel(adapter, head, record["layer"], record["sigma"],
                             digest=file_digest(directory / HEAD_FILE), shared=True)
