"""MUSIQ (Ke et al. 2021) with the SPAQ checkpoint: VBench's imaging_quality model.

VBench scores each frame with pyiqa's ``MUSIQ(pretrained_model_path=musiq_spaq_ckpt-358bb6af.pth)``
(num_class 1, so the score is the head's regression output on SPAQ's 0-100 MOS scale; VBench
divides the mean by 100 itself). This is our own module with pyiqa's parameter names and shapes,
so the converted checkpoint loads strictly unchanged, and our own copy of the preprocessing:

* VBench ("longer" mode): a frame whose longer side exceeds 512 is resized to
  ``(int(s*h), int(s*w))``, s = 512/longer, bilinear without antialias, and NOT rounded: upstream's
  ``load_video`` returns ``torch.Tensor(frames)``, float32 holding uint8 values, and torchvision
  rounds only integer tensors (tests/fixtures/golden/musiq_imaging_quality); then /255 and MUSIQ
  maps [0, 1] to [-1, 1].
* MUSIQ's multi-scale input: the image resized (aspect kept, bicubic, no antialias) to longer
  side 224 and 384 plus the native image, each cut into 32x32 patches (TF 'SAME' zero padding),
  each patch tagged with its hashed 10x10 grid position, scale id and a valid mask; the two
  resized scales are zero-padded to ceil(L/32)^2 patches, the native one is used whole.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.scorers.backends.real.common import load_strict, read_state_dict, save_random
from harness.weights import random_initialiser, resolve

PATCH = 32
GRID = 10  # hash grid for the spatial embedding
SCALES = (224, 384)  # resized longer sides; the native image is scale id len(SCALES)
HIDDEN, MLP_DIM, HEADS, LAYERS = 384, 1152, 6, 14
ROOT = 64  # ResNet stem width
VBENCH_MAX_SIDE = 512


def _pad_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' zero padding (the extra pixel goes bottom/right), as the JAX original."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pw = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class StdConv(nn.Conv2d):
    """Weight-standardised conv (BiT style): weights minus mean over (in, kh, kw), over unbiased std + 1e-5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        w = w / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(_pad_same(x, self.kernel_size[0], self.stride[0]), w, self.bias, self.stride)


class Bottleneck(nn.Module):
    """The single ResNet unit after the stem (width = input channels, projection shortcut)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = StdConv(cin, cin, 1, bias=False)
        self.gn1 = nn.GroupNorm(32, cin, eps=1e-4)
        self.conv2 = StdConv(cin, cin, 3, bias=False)
        self.gn2 = nn.GroupNorm(32, cin, eps=1e-4)
        self.conv3 = StdConv(cin, cout, 1, bias=False)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-4)
        self.conv_proj = StdConv(cin, cout, 1, bias=False)
        self.gn_proj = nn.GroupNorm(32, cout, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.gn_proj(self.conv_proj(x))
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        return F.relu(self.gn3(self.conv3(x)) + skip)


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (f(x).reshape(b, n, self.heads, -1).transpose(1, 2) for f in (self.query, self.key, self.value))
        attn = q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5
        # upstream replaces (not adds) every score touching a padded token with -1e3
        pair = mask[:, None, :, None] & mask[:, None, None, :]
        attn = attn.masked_fill(~pair, -1e3).softmax(-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class _Param(nn.Module):
    """Holds one parameter under a given name: only there to reproduce upstream key names."""

    def __init__(self, name: str, *shape: int, std: float):
        super().__init__()
        self.register_parameter(name, nn.Parameter(torch.randn(*shape) * std))


class TransformerEncoder(nn.Module):
    def __init__(self, dim: int = HIDDEN, mlp_dim: int = MLP_DIM, heads: int = HEADS, layers: int = LAYERS,
                 num_scales: int = len(SCALES) + 1, grid: int = GRID):
        super().__init__()
        self.posembed_input = _Param("position_emb", 1, grid * grid, dim, std=0.02)
        self.scaleembed_input = _Param("scale_emb", num_scales, dim, std=0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.transformer = nn.ModuleDict({f"encoderblock_{i}": TransformerBlock(dim, mlp_dim, heads)
                                          for i in range(layers)})

    def forward(self, x: torch.Tensor, pos: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.posembed_input.position_emb[0][pos] + self.scaleembed_input.scale_emb[scale]
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1)
        mask = torch.cat([mask.new_ones(len(x), 1), mask], 1)
        for block in self.transformer.values():
            x = block(x, mask)
        return self.encoder_norm(x)


class Musiq(nn.Module):
    """pyiqa's ``MUSIQ`` with the SPAQ configuration (num_class 1: a linear regression head)."""

    def __init__(self, num_class: int = 1):
        super().__init__()
        self.conv_root = StdConv(3, ROOT, 7, 2, bias=False)
        self.gn_root = nn.GroupNorm(32, ROOT, eps=1e-6)
        self.block1 = Bottleneck(ROOT, ROOT * 4)
        self.embedding = nn.Linear(ROOT * 4 * (PATCH // 4) ** 2, HIDDEN)
        self.transformer_encoder = TransformerEncoder()
        self.head = nn.Linear(HIDDEN, num_class)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, 3*32*32 + 3) packed tokens from ``multiscale_patches`` -> (B,) scores."""
        b, n, _ = tokens.shape
        pos, scale, mask = tokens[..., -3].long(), tokens[..., -2].long(), tokens[..., -1].bool()
        x = tokens[..., :-3].reshape(b * n, 3, PATCH, PATCH)  # unfold order is (channel, row, col)
        x = F.relu(self.gn_root(self.conv_root(x)))
        x = F.max_pool2d(_pad_same(x, 3, 2), 3, 2)  # zero padding is safe after the ReLU
        x = self.block1(x)
        x = self.embedding(x.permute(0, 2, 3, 1).reshape(b, n, -1))  # channel-last flatten, as the JAX model
        x = self.transformer_encoder(x, pos, scale, mask)
        return self.head(x[:, 0])[:, 0]  # 1 class: pyiqa's dist_to_mos is the identity


def hash_positions(count_h: int, count_w: int, grid: int = GRID) -> torch.Tensor:
    """Row-major hashed grid index per patch: each axis mapped onto ``grid`` cells by nearest neighbour.

    Uses torch's nearest interpolation (float32 source index) exactly as pyiqa does, so rounding edge
    cases agree with upstream rather than with exact integer arithmetic.
    """
    cells = torch.arange(grid, dtype=torch.float32)[None, None]
    rows = F.interpolate(cells, size=count_h, mode="nearest")[0, 0]
    cols = F.interpolate(cells, size=count_w, mode="nearest")[0, 0]
    return (rows[:, None] * grid + cols[None, :]).reshape(-1)


def _patch_tokens(img: torch.Tensor, scale_id: int, max_len: int | None) -> torch.Tensor:
    """(B, 3, H, W) -> (B, N, 3*P*P + 3): patch pixels, hash position, scale id, mask."""
    b = img.shape[0]
    ch, cw = math.ceil(img.shape[-2] / PATCH), math.ceil(img.shape[-1] / PATCH)
    patches = F.unfold(_pad_same(img, PATCH, PATCH), PATCH, stride=PATCH)  # (B, 3*P*P, ch*cw), row-major
    pos = hash_positions(ch, cw).to(img)
    meta = torch.stack([pos, torch.full_like(pos, scale_id), torch.ones_like(pos)])
    out = torch.cat([patches, meta.expand(b, -1, -1)], 1)
    if max_len is not None:  # zero-pad (mask 0, position 0, scale 0) or cut to max_len
        out = F.pad(out, (0, max(max_len - out.shape[-1], 0)))[..., :max_len]
    return out.transpose(1, 2)


def multiscale_patches(x: torch.Tensor, scales: tuple[int, ...] = SCALES) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, N, 3*32*32 + 3) tokens of scales 224, 384 and the native image."""
    h, w = x.shape[-2:]
    parts = []
    for scale_id, longer in enumerate(sorted(scales)):
        ratio = longer / max(h, w)
        size = (round(h * ratio), round(w * ratio))  # Python round (half to even), as upstream
        resized = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        parts.append(_patch_tokens(resized, scale_id, math.ceil(longer / PATCH) ** 2))
    parts.append(_patch_tokens(x, len(scales), None))  # native resolution: every patch, no padding
    return torch.cat(parts, 1)


def vbench_resize(frames: torch.Tensor, max_side: int = VBENCH_MAX_SIDE) -> torch.Tensor:
    """VBench's 'longer' rule on (T, 3, H, W) float frames holding uint8 values; float out, as upstream's."""
    h, w = frames.shape[-2:]
    if max(h, w) <= max_side:
        return frames
    s = max_side / max(h, w)
    # load_video's frames are float32, which torchvision's Resize interpolates without rounding back
    return F.interpolate(frames, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False, antialias=False)


class MusiqScorer:
    """Per-frame MUSIQ-SPAQ scores (0-100 scale) of uint8 RGB frames, VBench preprocessing included."""

    def __init__(self, weight: str = "musiq_spaq", device: str | torch.device = "cpu", batch: int = 16):
        resolved = resolve(weight)
        self.identity = "musiq-spaq" + ("/random-weights" if resolved.is_random else "")
        self.device, self.batch = torch.device(device), batch
        self.model = Musiq()
        load_strict(self.model, read_state_dict(resolved), f"MUSIQ ({weight}, {resolved.path})")
        self.model.eval().to(self.device)

    @torch.no_grad()
    def score_frames(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T,) float64 raw MUSIQ scores (VBench divides the video mean by 100)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float()
        x = (vbench_resize(x) / 255.0 - 0.5) * 2  # VBench /255, then MUSIQ's [-1, 1]
        # all frames of a video share a size, hence a sequence length: plain chunks batch them
        if not len(x):
            return np.zeros(0)
        scores = [self.model(multiscale_patches(chunk)) for chunk in x.split(self.batch)]
        return torch.cat(scores).double().cpu().numpy()


@random_initialiser("musiq_spaq")
def _write_random(path: Path) -> None:
    # pyiqa loads the file with no wrapper key (load_pretrained_network without weight_keys): a flat state dict
    torch.manual_seed(0)
    save_random(Musiq().state_dict(), path)
