"""CoTracker point trackers (facebookresearch/co-tracker), loading the upstream checkpoints strictly.

Two models, our own implementation with the upstream parameter names and shapes, so the
published files load with ``load_strict`` unchanged:

* ``cotracker3``: CoTracker3 offline (``scaled_offline.pth``, ``CoTrackerThreeOffline`` of
  ``cotracker/models/core/cotracker/cotracker3_offline.py`` at upstream HEAD 82e02e8, built as
  ``hubconf.cotracker3_offline`` does: stride 4, correlation radius 3, 4 levels, window 60).
  The whole video is one window; its 60-frame time embedding is linearly resampled to T frames.
  SHIFT's long-term motion reward tracks with it.
* ``cotracker2``: CoTracker2 (``cotracker2.pth``, ``CoTracker2`` of ``.../cotracker/cotracker.py``
  at the v2 release fac2798, unchanged in arithmetic up to HEAD; stride 4, correlation radius 3,
  sliding windows of 8 frames moved by 4). VBench-I2V's ``camera_motion`` loads it with
  ``torch.hub.load("facebookresearch/co-tracker", "cotracker2")`` and calls the predictor with
  ``grid_size=10`` (a 10x10 grid on frame 0, no support grid): that is ``track_grid``.

Inference follows upstream's offline ``CoTrackerPredictor``: RGB in [0, 255] resized bilinearly
(align_corners) to ``interp_shape`` = the model resolution 384x512, query (x, y) scaled by
(interp - 1) / (input - 1); for given queries a 6x6 support grid on frame 0 is tracked with them
and dropped (``support_grid``), a grid query (``track_grid``) has none; 6 iterative updates;
visible = sigmoid(visibility logit) > 0.9; frame 0 is overwritten with the query itself and
marked visible; positions scaled back to input pixels.

What ``Tracks`` holds: ``xy`` (T, M, 2) input-pixel (x, y); ``visible`` the thresholded flag.
``confidence``: CoTracker3 predicts one (sigmoid of its confidence logit), returned as is
(1.0 on frame 0, where the position is the query); upstream's offline predictor thresholds
visibility alone and does not combine it with confidence (its online predictor thresholds
vis * conf at 0.6), and so do we. CoTracker2 has no confidence output: we return 1.0 where
visible and 0.0 elsewhere.

Deliberate differences: queries are on frame 0 only (the ``Tracker`` interface), so upstream's
attention masks for points queried later are all ones and omitted (they add zeros); the query
features are sampled from frame 0 directly (upstream samples the (T, H, W) volume at t = 0,
which is the same up to rounding); frame 0 of ``xy`` is the query exactly (upstream returns it
after a resize round trip, equal up to float rounding). Too-short videos are refused: CoTracker2
runs ceil((T - 8) / 4) + 1 windows, none for T <= 4, where upstream returns all-zero tracks; we
need T >= 5. CoTracker3 needs T >= 2. Frames need both sides >= 2 px (the query scaling divides
by side - 1). ``interp_shape`` other than 384x512 is allowed (tests use small ones) and named in
the identity; the model still uses its 384x512 constants (CoTracker2's position embedding grid,
CoTracker3's relative-motion scale), as upstream's model code does for another input size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.scorers.backends.flow import check_frame
from harness.scorers.backends.real.common import load_strict, read_state_dict, save_random
from harness.scorers.backends.real.raft import ResidualBlock
from harness.scorers.backends.tracking import FlowFields, Tracker, Tracks, register_tracker
from harness.weights import ResolvedWeight, manifest_entry, random_initialiser, resolve

STRIDE = 4
LATENT = 128  # feature channels
HIDDEN = 384  # transformer width
HEADS = 8
CORR_LEVELS, CORR_RADIUS = 4, 3
NUM_VIRTUAL = 64
MODEL_RESOLUTION = (384, 512)  # (H, W) both checkpoints were trained at
MIN_INTERP_SIDE = STRIDE * 2 ** (CORR_LEVELS - 1)  # the coarsest correlation level keeps >= 1 pixel
V2_WINDOW, V3_WINDOW = 8, 60


# -- sampling helpers (upstream models/core/model_utils.py) ----------------------------------------
def sample_xy(img: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear ``img`` (N, C, H, W) at pixel (x, y) ``xy`` (N, h, w, 2) -> (N, C, h, w).

    align_corners with border padding, as upstream's ``bilinear_sampler``: a point outside the
    map reads the nearest edge value.
    """
    h, w = img.shape[-2:]
    grid = torch.stack([2 * xy[..., 0] / max(w - 1, 1) - 1, 2 * xy[..., 1] / max(h - 1, 1) - 1], -1)
    return F.grid_sample(img, grid, align_corners=True, padding_mode="border")


def window_offsets(radius: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(2r+1, 2r+1, 2) offsets; entry [i, j] is (x offset d_i, y offset d_j).

    Upstream adds a ``meshgrid(dy, dx, indexing="ij")`` to (x, y) points, so its windows are
    x-major; the trained correlation MLPs expect that order.
    """
    d = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return torch.stack(torch.meshgrid(d, d, indexing="ij"), -1)


def grid_points(size: int, extent: tuple[int, int]) -> torch.Tensor:
    """(size*size, 2) (x, y) grid over an (H, W) ``extent``, row-major (upstream ``get_points_on_a_grid``).

    A margin of W/64 on every side (also vertically); a 1x1 grid is the centre (W/2, H/2).
    """
    h, w = extent
    if size == 1:
        return torch.tensor([[w / 2, h / 2]])
    margin = w / 64
    ys, xs = torch.meshgrid(
        torch.linspace(margin, h - margin, size), torch.linspace(margin, w - margin, size), indexing="ij"
    )
    return torch.stack([xs, ys], -1).reshape(-1, 2)


# -- fixed embeddings (upstream models/core/embeddings.py) ------------------------------------------
def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(1, M, dim): [sin(p * w_k), cos(p * w_k)], w_k = 10000^(-2k/dim), computed in float64."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0))
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], 1)[None].float()


def sincos_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """(1, dim, H, W): the first half of the channels encodes x (the column), the second half y."""
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, xs), sincos_1d(dim // 2, ys)], 2)  # (1, H*W, dim)
    return emb.reshape(1, height, width, dim).permute(0, 3, 1, 2)


def flow_embedding(xy: torch.Tensor, channels: int = 64) -> torch.Tensor:
    """CoTracker2's displacement embedding (..., 2) -> (..., 2 + 2 * channels): [x, y, pe(x), pe(y)].

    pe interleaves sin and cos of v * f_k with f_k = 2k * 1000 / channels (linear, not geometric).
    """
    freq = torch.arange(0, channels, 2, device=xy.device, dtype=torch.float32) * (1000.0 / channels)
    parts = [xy]
    for v in (xy[..., 0:1], xy[..., 1:2]):
        parts.append(torch.stack([torch.sin(v * freq), torch.cos(v * freq)], -1).flatten(-2))
    return torch.cat(parts, -1)


def posenc(x: torch.Tensor, min_deg: int, max_deg: int) -> torch.Tensor:
    """CoTracker3's relative-motion encoding: [x, sin(x * 2^k), sin(x * 2^k + pi/2)] (scale-major)."""
    scales = 2.0 ** torch.arange(min_deg, max_deg, device=x.device, dtype=x.dtype)
    xb = (x[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat([x, torch.sin(torch.cat([xb, xb + 0.5 * math.pi], -1))], -1)


# -- feature encoder (upstream blocks.py BasicEncoder; its residual block is RAFT's, instance norm) ---
class BasicEncoder(nn.Module):
    """Stride-4 features: 7x7/2 stem, four residual stages (64, 96/2, 128/2, 128/2) each resized
    (bilinear, align_corners) to 1/4 and concatenated, a 3x3 conv to 256 and a 1x1 conv to 128."""

    def __init__(self, output_dim: int = LATENT, stride: int = STRIDE) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(3, output_dim // 2, 7, stride=2, padding=3)
        self.norm1 = nn.InstanceNorm2d(output_dim // 2)
        widths = (output_dim // 2, output_dim // 4 * 3, output_dim, output_dim)
        cin = output_dim // 2
        for i, (cout, s) in enumerate(zip(widths, (1, 2, 2, 2), strict=True), 1):
            blocks = ResidualBlock(cin, cout, "instance", s), ResidualBlock(cout, cout, "instance")
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = cout
        self.conv2 = nn.Conv2d(sum(widths), output_dim * 2, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(output_dim * 2)
        self.conv3 = nn.Conv2d(output_dim * 2, output_dim, 1)
        for m in self.modules():  # upstream's init, so random-init files have its statistics
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2] // self.stride, x.shape[-1] // self.stride)
        x = F.relu(self.norm1(self.conv1(x)))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(F.interpolate(x, size, mode="bilinear", align_corners=True))
        return self.conv3(F.relu(self.norm2(self.conv2(torch.cat(stages, 1)))))


# -- transformer (upstream blocks.py Attention/AttnBlock/Mlp, cotracker.py EfficientUpdateFormer) --
class Mlp(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int | None = None, tanh_gelu: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cin, hidden)
        self.act = nn.GELU(approximate="tanh" if tanh_gelu else "none")
        self.fc2 = nn.Linear(hidden, cout or cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention, 8 heads of 48 channels, keys and values from one ``to_kv`` projection."""

    def __init__(self, dim: int = HIDDEN, context_dim: int | None = None, heads: int = HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        k, v = self.to_kv(x if context is None else context).chunk(2, -1)
        q, k, v = (t.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2) for t in (self.to_q(x), k, v))
        return self.to_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class AttnBlock(nn.Module):
    """Pre-norm self-attention and MLP (tanh GELU); the norms have no affine parameters."""

    def __init__(self, dim: int = HIDDEN) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim, tanh_gelu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    """Pre-norm cross-attention to a context (whose LayerNorm is affine, eps 1e-5) and MLP."""

    def __init__(self, dim: int = HIDDEN) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm_context = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim, tanh_gelu=True)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm1(x), self.norm_context(context))
        return x + self.mlp(self.norm2(x))


class EfficientUpdateFormer(nn.Module):
    """Alternating attention over time (per track) and over tracks (per frame) via 64 learned
    virtual tracks: virtual <- points, virtual self-attention, points <- virtual.

    ``virual_tracks`` keeps upstream's spelling (it is the checkpoint key). With
    ``vis_conf_head`` (CoTracker3) the last two outputs come from a separate linear head.
    """

    def __init__(self, depth: int, input_dim: int, output_dim: int, vis_conf_head: bool = False) -> None:
        super().__init__()
        self.input_transform = nn.Linear(input_dim, HIDDEN)
        self.flow_head = nn.Linear(HIDDEN, output_dim - 2 if vis_conf_head else output_dim)
        self.vis_conf_head = nn.Linear(HIDDEN, 2) if vis_conf_head else None
        self.virual_tracks = nn.Parameter(torch.randn(1, NUM_VIRTUAL, 1, HIDDEN))
        # Upstream has time_depth == space_depth for both models: a space step after every time step.
        self.time_blocks = nn.ModuleList(AttnBlock() for _ in range(depth))
        self.space_virtual_blocks = nn.ModuleList(AttnBlock() for _ in range(depth))
        self.space_point2virtual_blocks = nn.ModuleList(CrossAttnBlock() for _ in range(depth))
        self.space_virtual2point_blocks = nn.ModuleList(CrossAttnBlock() for _ in range(depth))
        for m in self.modules():  # upstream's init (xavier, zero bias; heads N(0, 0.001) truncated)
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for head in (self.flow_head, self.vis_conf_head):
            if head is not None:
                nn.init.trunc_normal_(head.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, T, input_dim) -> (B, N, T, output_dim)."""
        tokens = self.input_transform(x)
        b, n, t, c = tokens.shape
        tokens = torch.cat([tokens, self.virual_tracks.expand(b, -1, t, -1)], 1)
        for time_block, virtual_self, point2virtual, virtual2point in zip(
            self.time_blocks,
            self.space_virtual_blocks,
            self.space_point2virtual_blocks,
            self.space_virtual2point_blocks,
            strict=True,
        ):
            tokens = time_block(tokens.reshape(b * (n + NUM_VIRTUAL), t, c)).view(b, n + NUM_VIRTUAL, t, c)
            space = tokens.permute(0, 2, 1, 3).reshape(b * t, n + NUM_VIRTUAL, c)
            points, virtual = space[:, :n], space[:, n:]
            virtual = virtual_self(virtual2point(virtual, points))
            points = point2virtual(points, virtual)
            tokens = torch.cat([points, virtual], 1).view(b, t, n + NUM_VIRTUAL, c).permute(0, 2, 1, 3)
        points = tokens[:, :n]
        out = self.flow_head(points)
        return out if self.vis_conf_head is None else torch.cat([out, self.vis_conf_head(points)], -1)


def _features(fnet: BasicEncoder, video: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """(B, T, 3, H, W) in [-1, 1] -> (B, T, C, H/4, W/4), ``chunk`` frames per pass (norms are per frame)."""
    b, t = video.shape[:2]
    flat = video.flatten(0, 1)
    fmaps = torch.cat([fnet(flat[i : i + chunk]) for i in range(0, len(flat), chunk)])
    return fmaps.view(b, t, *fmaps.shape[1:])


def _pyramid(fmaps: torch.Tensor, levels: int = CORR_LEVELS) -> list[torch.Tensor]:
    """(B, T, C, h, w) maps average-pooled 2x2 ``levels - 1`` times."""
    out = [fmaps]
    for _ in range(levels - 1):
        b, t = fmaps.shape[:2]
        fmaps = F.avg_pool2d(fmaps.flatten(0, 1), 2, stride=2)
        fmaps = fmaps.view(b, t, *fmaps.shape[1:])
        out.append(fmaps)
    return out


# -- CoTracker2 (upstream v2 release fac2798, cotracker/models/core/cotracker/cotracker.py) ----------
class CoTracker2(nn.Module):
    """CoTracker2. ``forward(video, queries)``: video (B, T, 3, H, W) RGB in [0, 255] with H, W
    multiples of 4, queries (B, N, 2) pixel (x, y) on frame 0. Returns positions (B, T, N, 2) in
    pixels and visibility logits (B, T, N).

    Sliding windows of ``window_len`` frames moved by half a window; the video is padded with its
    last frame to a whole number of windows. A window starts from the previous window's
    predictions (its last half-window replicated forward) and marks the overlapping frames as
    already tracked. Each window runs ``iters`` updates of positions and per-frame track features.
    """

    input_dim = 456  # 130 displacement embedding + 4 * 49 correlations + 128 feature + 2 (mask, vis)

    def __init__(self, window_len: int = V2_WINDOW, model_resolution: tuple[int, int] = MODEL_RESOLUTION) -> None:
        super().__init__()
        self.window_len = window_len
        self.fnet = BasicEncoder()
        self.updateformer = EfficientUpdateFormer(6, self.input_dim, LATENT + 2)
        self.register_buffer("time_emb", sincos_1d(self.input_dim, torch.arange(window_len).float()))
        h, w = model_resolution
        self.register_buffer("pos_emb", sincos_2d(self.input_dim, h // STRIDE, w // STRIDE))
        self.norm = nn.GroupNorm(1, LATENT)
        self.track_feat_updater = nn.Sequential(nn.Linear(LATENT, LATENT), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(LATENT, 1))

    def min_frames(self) -> int:
        return self.window_len // 2 + 1

    def window_starts(self, num_frames: int) -> list[int]:
        """First frame of each window: ceil((T - S) / step) + 1 windows (none for T <= S/2)."""
        step = self.window_len // 2
        count = (num_frames - self.window_len + step - 1) // step + 1
        return list(range(0, step * max(count, 0), step))

    def _correlations(self, pyramid: list[torch.Tensor], feat: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Windowed correlation of each track's per-frame feature with the pooled maps.

        pyramid: level maps (B, S, C, h, w); feat (B, S, N, C); coords (B, S, N, 2) in stride-4
        units. Returns (B, N, S, levels * 49), the dot products / sqrt(C) bilinearly read
        (border padding) in a 7x7 window around each point at each level.
        """
        b, s, n, c = feat.shape
        delta = window_offsets(CORR_RADIUS, coords.device)
        out = []
        for lvl, fmap in enumerate(pyramid):
            h, w = fmap.shape[-2:]
            corr = torch.einsum("bsnc,bschw->bsnhw", feat, fmap) / math.sqrt(c)
            xy = coords.reshape(b * s * n, 1, 1, 2) / 2**lvl + delta
            out.append(sample_xy(corr.reshape(b * s * n, 1, h, w), xy).view(b, s, n, -1))
        return torch.cat(out, -1).permute(0, 2, 1, 3)

    def forward_window(self, fmaps, coords, track_feat, vis, track_mask, iters):
        """One window. fmaps (B, S, C, h, w); coords (B, S, N, 2) stride units; track_feat
        (B, S, N, C); vis (B, S, N, 1) logits; track_mask (B, S, N, 1). Returns the final
        coordinates (stride units) and the visibility logits (B, S, N)."""
        b, s, n, _ = coords.shape
        pyramid = _pyramid(fmaps)
        mask_vis = torch.cat([track_mask, vis], -1).permute(0, 2, 1, 3)  # B N S 2
        pos = sample_xy(self.pos_emb.expand(b, -1, -1, -1), coords[:, 0, :, None])  # B E N 1
        pos = pos[..., 0].permute(0, 2, 1)[:, :, None]  # B N 1 E
        for _ in range(iters):
            flows = (coords - coords[:, :1]).permute(0, 2, 1, 3)  # B N S 2
            feat = track_feat.permute(0, 2, 1, 3)
            x = torch.cat([flow_embedding(flows), self._correlations(pyramid, track_feat, coords), feat, mask_vis], -1)
            delta = self.updateformer(x + pos + self.time_emb[:, None])  # B N S 130
            coords = coords + delta[..., :2].permute(0, 2, 1, 3)
            feat = feat + self.track_feat_updater(self.norm(delta[..., 2:].reshape(-1, LATENT)).view_as(feat))
            track_feat = feat.permute(0, 2, 1, 3)
        return coords, self.vis_predictor(track_feat)[..., 0]

    def forward(self, video: torch.Tensor, queries: torch.Tensor, iters: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _, h, w = video.shape
        n = queries.shape[1]
        s, step = self.window_len, self.window_len // 2
        overlap = s - step
        starts = self.window_starts(t)
        if not starts:
            raise ValueError(f"cotracker2: {t} frames give no {s}-frame window; need >= {self.min_frames()}")
        video = 2 * (video / 255.0) - 1.0
        pad = (s - t % s) % s
        video = torch.cat([video, video[:, -1:].expand(-1, pad, -1, -1, -1)], 1)
        fmaps = _features(self.fnet, video)
        queried = queries / STRIDE
        # Query features from frame 0, the same in every frame of every window (frame-0 queries only).
        track_feat = sample_xy(fmaps[:, 0], queried[:, :, None])[..., 0].permute(0, 2, 1)  # B N C
        track_feat = track_feat[:, None].expand(-1, s, -1, -1)
        coords_pred = video.new_zeros(b, t, n, 2)
        vis_pred = video.new_zeros(b, t, n)
        coords_init = queried[:, None].expand(-1, s, -1, -1)
        vis_init = video.new_full((b, s, n, 1), 10.0)
        track_mask = video.new_ones(b, s, n, 1)
        for ind in starts:
            if ind > 0:
                prev = coords_pred[:, ind : ind + overlap] / STRIDE
                coords_init = torch.cat([prev, prev[:, -1:].expand(-1, step, -1, -1)], 1)
                prev_vis = vis_pred[:, ind : ind + overlap, :, None]
                vis_init = torch.cat([prev_vis, prev_vis[:, -1:].expand(-1, step, -1, -1)], 1)
                track_mask = torch.cat([video.new_zeros(b, overlap, n, 1), video.new_ones(b, step, n, 1)], 1)
            window = fmaps[:, ind : ind + s]
            coords, vis = self.forward_window(window, coords_init, track_feat, vis_init, track_mask, iters)
            kept = min(t - ind, s)
            coords_pred[:, ind : ind + kept] = coords[:, :kept] * STRIDE
            vis_pred[:, ind : ind + kept] = vis[:, :kept]
        return coords_pred, vis_pred


# -- CoTracker3 offline (upstream HEAD 82e02e8, cotracker3_offline.py / cotracker3_online.py base) ---
class CoTrackerThreeOffline(nn.Module):
    """CoTracker3, offline. ``forward(video, queries)`` as ``CoTracker2.forward``; returns positions
    (B, T, N, 2) in pixels, visibility and confidence logits (B, T, N).

    Features are L2-normalised per pixel. Each track keeps the 7x7 neighbourhood of its query
    feature at 4 pyramid levels; every update correlates it with the 7x7 neighbourhood of the
    current position in every frame (a 49x49 volume per level, embedded by ``corr_mlp``) and adds
    the visibility and confidence logits and a Fourier encoding of the motion to both neighbours
    in time. All T frames form one window.
    """

    input_dim = 1110  # vis + conf + 4 * 256 correlation embedding + 84 motion encoding

    def __init__(self, window_len: int = V3_WINDOW, model_resolution: tuple[int, int] = MODEL_RESOLUTION) -> None:
        super().__init__()
        self.model_resolution = model_resolution
        self.fnet = BasicEncoder()
        self.updateformer = EfficientUpdateFormer(3, self.input_dim, 4, vis_conf_head=True)
        r = 2 * CORR_RADIUS + 1
        self.corr_mlp = Mlp(r**4, 384, 256)
        self.register_buffer("time_emb", sincos_1d(self.input_dim, torch.arange(window_len).float()))

    def min_frames(self) -> int:
        return 2

    def time_embedding(self, t: int) -> torch.Tensor:
        """(1, T, D): the trained embedding, linearly resampled (align_corners=False) when T differs."""
        if t == self.time_emb.shape[1]:
            return self.time_emb
        return F.interpolate(self.time_emb.permute(0, 2, 1), size=t, mode="linear").permute(0, 2, 1)

    def forward(
        self, video: torch.Tensor, queries: torch.Tensor, iters: int = 6
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _, h, w = video.shape
        n = queries.shape[1]
        if t < self.min_frames():
            raise ValueError(f"cotracker3: a track needs at least 2 frames, got {t}")
        fmaps = _features(self.fnet, 2 * (video / 255.0) - 1.0)
        fmaps = fmaps / fmaps.square().sum(2, keepdim=True).clamp_min(1e-12).sqrt()
        pyramid = _pyramid(fmaps)
        delta = window_offsets(CORR_RADIUS, video.device).reshape(1, 1, -1, 2)  # 1 1 49 2
        queried = queries / STRIDE
        support = []  # per level: B N 49 C, the query neighbourhood on frame 0
        for lvl, fmap in enumerate(pyramid):
            xy = queried[:, :, None] / 2**lvl + delta
            support.append(sample_xy(fmap[:, 0], xy).permute(0, 2, 3, 1))
        vis = video.new_zeros(b, t, n)
        conf = video.new_zeros(b, t, n)
        coords = queried[:, None].expand(-1, t, -1, -1)
        scale = torch.tensor([self.model_resolution[1], self.model_resolution[0]], device=video.device) / STRIDE
        time_emb = self.time_embedding(t)
        for _ in range(iters):
            embs = []
            for lvl, fmap in enumerate(pyramid):
                xy = (coords / 2**lvl).reshape(b * t, n, 1, 2) + delta[0]  # (B T) N 49 2
                around = sample_xy(fmap.flatten(0, 1), xy).view(b, t, -1, n, delta.shape[2])  # B T C N 49
                volume = torch.einsum("btcnp,bnqc->btnpq", around, support[lvl])
                embs.append(self.corr_mlp(volume.reshape(b, t, n, -1)))
            forward_motion = F.pad(coords[:, :-1] - coords[:, 1:], (0, 0, 0, 0, 0, 1)) / scale
            backward_motion = F.pad(coords[:, 1:] - coords[:, :-1], (0, 0, 0, 0, 1, 0)) / scale
            motion = posenc(torch.cat([forward_motion, backward_motion], -1), 0, 10)
            x = torch.cat([vis[..., None], conf[..., None], *embs, motion], -1).permute(0, 2, 1, 3)  # B N T D
            out = self.updateformer(x + time_emb[:, None]).permute(0, 2, 1, 3)  # B T N 4
            coords = coords + out[..., :2]
            vis = vis + out[..., 2]
            conf = conf + out[..., 3]
        return coords * STRIDE, vis, conf


# -- weights ---------------------------------------------------------------------------------------
MODELS: dict[str, type[nn.Module]] = {"cotracker2": CoTracker2, "cotracker3": CoTrackerThreeOffline}


@functools.lru_cache(maxsize=4)
def _load(kind: str, weight: ResolvedWeight, device: str) -> nn.Module:
    # Keyed by the resolved file (path and sha256): a cache switched from random-init to real
    # weights (or a test's tmp cache) never gets a stale model.
    model = MODELS[kind]()
    load_strict(model, read_state_dict(weight), f"{MODELS[kind].__name__} ({weight.name}, {weight.path})")
    return model.to(device).eval().requires_grad_(False)


def load_cotracker(kind: str, weights: str | None = None, device: str = "cpu") -> nn.Module:
    """``kind`` ("cotracker2"/"cotracker3") with manifest entry ``weights`` (default: same name) loaded strictly."""
    return _load(kind, resolve(weights or kind), device)


def _write_random(kind: str, path: Path) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)  # reproducible random-init files
        sd = MODELS[kind]().state_dict()
    save_random(sd, path)  # upstream files are plain state dicts, no prefix


@random_initialiser("cotracker3")
def write_random_cotracker3(path: Path) -> None:
    """A random-init ``scaled_offline.pth`` in the upstream layout (time_emb buffer included)."""
    _write_random("cotracker3", path)


@random_initialiser("cotracker2")
def write_random_cotracker2(path: Path) -> None:
    """A random-init ``cotracker2.pth`` in the upstream layout (time_emb and pos_emb buffers included)."""
    _write_random("cotracker2", path)


# -- the trackers ------------------------------------------------------------------------------------
class CoTrackerTracker(Tracker):
    """Shared predictor logic; subclasses name the model. Options (``defaults``): ``weights``
    (manifest entry), ``iters`` (updates, upstream 6), ``interp_shape`` (H, W the frames are
    resized to, upstream = the model resolution 384x512), ``visibility_threshold`` (upstream
    0.9), ``support_grid`` (side of the frame-0 support grid tracked with given queries,
    upstream 6; 0 for none), ``device``. The identity names every option that differs from the
    defaults and ends in ``/random-weights`` for a random-init file.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]
    MIN_FRAMES: ClassVar[int]

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            allowed = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
            raise ValueError(f"tracker {self.name!r} has no option(s) {unknown}; allowed: {allowed}")
        o = {**self.defaults, **options}
        shape = o["interp_shape"]
        if (
            not isinstance(shape, list | tuple)
            or len(shape) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
            or any(v % STRIDE or v < MIN_INTERP_SIDE for v in shape)
        ):
            raise ValueError(
                f"{self.name}: interp_shape must be (H, W), multiples of {STRIDE} and >= {MIN_INTERP_SIDE} "
                f"(the coarsest correlation level keeps a pixel), got {shape!r}"
            )
        o["interp_shape"] = tuple(shape)
        for key, low in (("iters", 1), ("support_grid", 0)):
            if isinstance(o[key], bool) or not isinstance(o[key], int) or o[key] < low:
                raise ValueError(f"{self.name}: {key} must be an integer >= {low}, got {o[key]!r}")
        thr = o["visibility_threshold"]
        if isinstance(thr, bool) or not isinstance(thr, int | float) or not 0 <= thr <= 1:
            raise ValueError(f"{self.name}: visibility_threshold must be in [0, 1], got {thr!r}")
        manifest_entry(o["weights"])  # an unknown name fails now, not at the first video
        torch.device(o["device"])
        self.options = o

    @property
    def identity(self) -> str:
        def show(v: Any) -> str:
            return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)

        changed = {k: v for k, v in self.options.items() if v != self.defaults[k]}
        ident = (
            f"{self.name}({','.join(f'{k}={show(v)}' for k, v in sorted(changed.items()))})" if changed else self.name
        )
        return ident + ("/random-weights" if resolve(self.options["weights"]).is_random else "")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.options}>"

    @property
    def model(self) -> nn.Module:
        return load_cotracker(self.name, self.options["weights"], self.options["device"])

    def _video(self, frames: Sequence[np.ndarray]) -> tuple[torch.Tensor, int, int]:
        """(1, T, 3, ih, iw) float RGB in [0, 255] resized to ``interp_shape``; the input (H, W)."""
        frames = [check_frame(f) for f in frames]
        if not frames or any(f.shape[:2] != frames[0].shape[:2] for f in frames):
            raise ValueError(f"{self.name}: expected a non-empty video of frames of one size")
        need = self.MIN_FRAMES
        if len(frames) < need:
            raise ValueError(f"{self.name}: the video has {len(frames)} frames, at least {need} are needed")
        h, w = frames[0].shape[:2]
        if min(h, w) < 2:
            raise ValueError(f"{self.name}: frames of {h}x{w} are too small; both sides must be >= 2 px")
        video = torch.from_numpy(np.stack(frames)).float()
        video = video[..., None].expand(-1, -1, -1, 3) if video.ndim == 3 else video
        video = video.permute(0, 3, 1, 2).to(self.options["device"])
        video = F.interpolate(video, self.options["interp_shape"], mode="bilinear", align_corners=True)
        return video[None], h, w

    def _scale(self, h: int, w: int) -> torch.Tensor:
        """Input pixels -> interp pixels, per (x, y)."""
        ih, iw = self.options["interp_shape"]
        return torch.tensor([(iw - 1) / (w - 1), (ih - 1) / (h - 1)])

    def _predict(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Model positions (T, N, 2) in interp pixels, visibility probability and confidence (T, N)."""
        out = self.model(video, queries[None].to(video.device), iters=self.options["iters"])
        coords, vis = out[0][0].cpu(), torch.sigmoid(out[1][0]).cpu()
        conf = torch.sigmoid(out[2][0]).cpu() if len(out) > 2 else None
        return coords, vis, conf

    def _tracks(self, coords, vis, conf, first_xy: np.ndarray, h: int, w: int) -> Tracks:
        xy = (coords / self._scale(h, w)).numpy().astype(np.float32)
        xy[0] = first_xy  # upstream overwrites the query frame with the query itself
        visible = (vis > self.options["visibility_threshold"]).numpy().astype(np.float32)
        visible[0] = 1.0
        if conf is None:  # CoTracker2: no confidence output (see the module docstring)
            confidence = visible.copy()
        else:
            confidence = conf.numpy().astype(np.float32)
            confidence[0] = 1.0
        return Tracks(xy, visible, confidence)

    def track(self, frames: Sequence[np.ndarray], queries: np.ndarray, fields: FlowFields | None = None) -> Tracks:
        """Track ``queries`` (M, 2) input-pixel (x, y) on frame 0; ``fields`` (flow) are not used."""
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != 2 or not len(queries) or not np.isfinite(queries).all():
            raise ValueError(f"{self.name}: queries must be a finite (M >= 1, 2) array of (x, y), got {queries.shape}")
        video, h, w = self._video(frames)
        q = torch.from_numpy(queries) * self._scale(h, w)
        m = len(q)
        if self.options["support_grid"]:
            q = torch.cat([q, grid_points(self.options["support_grid"], self.options["interp_shape"])])
        with torch.inference_mode():
            coords, vis, conf = self._predict(video, q)
        return self._tracks(coords[:, :m], vis[:, :m], None if conf is None else conf[:, :m], queries, h, w)

    def track_grid(self, frames: Sequence[np.ndarray], grid_size: int) -> Tracks:
        """Upstream's ``predictor(video, grid_size=...)``: a row-major grid_size x grid_size grid on
        frame 0 (laid out over ``interp_shape``, margin W/64), no support grid. VBench-I2V's
        camera_motion calls it with grid_size=10 on CoTracker2."""
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
            raise ValueError(f"{self.name}: grid_size must be an integer >= 1, got {grid_size!r}")
        video, h, w = self._video(frames)
        q = grid_points(grid_size, self.options["interp_shape"])
        with torch.inference_mode():
            coords, vis, conf = self._predict(video, q)
        first = (q / self._scale(h, w)).numpy().astype(np.float32)
        return self._tracks(coords, vis, conf, first, h, w)


_COMMON = {
    "iters": 6,
    "interp_shape": MODEL_RESOLUTION,
    "visibility_threshold": 0.9,
    "support_grid": 6,
    "device": "cpu",
}


@register_tracker
class CoTracker3Tracker(CoTrackerTracker):
    """CoTracker3 offline, ``scaled_offline.pth``; the whole video is one window (T >= 2)."""

    name = "cotracker3"
    MIN_FRAMES = 2
    defaults: ClassVar[dict[str, Any]] = {"weights": "cotracker3", **_COMMON}


@register_tracker
class CoTracker2Tracker(CoTrackerTracker):
    """CoTracker2, ``cotracker2.pth`` (VBench-I2V camera_motion); 8-frame sliding windows (T >= 5)."""

    name = "cotracker2"
    MIN_FRAMES = V2_WINDOW // 2 + 1  # fewer frames give no window (upstream returns all-zero tracks)
    defaults: ClassVar[dict[str, Any]] = {"weights": "cotracker2", **_COMMON}
