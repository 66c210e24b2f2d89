"""RAFT (Teed & Deng, ECCV 2020) optical flow, loading the upstream ``raft-things.pth`` strictly.

Our own implementation of the full (not small) model of princeton-vl/RAFT: its
``state_dict()`` has exactly the upstream keys and shapes once the file's ``module.``
prefix (it was saved from DataParallel) is stripped, so the published file loads with
``load_strict``. Inference follows VBench's use (dynamic_degree and the temporal-flickering
static filter): RGB in [0, 255], replicate padding to a multiple of 8 split evenly between
the sides ("sintel" mode), 20 refinement iterations, the final convex-upsampled flow, unpadded
(``padded_flows`` keeps the padded field, on which VBench's top-x % statistics are taken).

Degenerate sizes: the 4-level correlation pyramid halves the 1/8-resolution map three times,
so a padded side below 64 px leaves a level empty (upstream fails in ``avg_pool2d``; we refuse
such frames). For padded sides of 64-127 px the coarsest level is one pixel wide and upstream's
sampler divides by zero (side - 1), which gives NaN on CPU; we sample that level as a one-pixel
map instead. From 128 px on, the arithmetic is the upstream one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.scorers.backends.flow import FlowBackend, register_flow_backend
from harness.scorers.backends.real.common import load_strict, read_state_dict, save_random
from harness.weights import ResolvedWeight, WeightsError, manifest_entry, random_initialiser, resolve

HIDDEN = CONTEXT = 128
CORR_LEVELS, CORR_RADIUS = 4, 4
MIN_PADDED_SIDE = 8 * 2 ** (CORR_LEVELS - 1)  # the coarsest pyramid level keeps >= 1 pixel


# -- feature and context encoders (upstream core/extractor.py) -----------------------------------
def _norm(kind: str, channels: int) -> nn.Module:
    # InstanceNorm2d without affine/running stats: fnet's norms hold no tensors, as upstream's.
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.InstanceNorm2d(channels)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1, self.norm2 = _norm(norm, cout), _norm(norm, cout)
        self.downsample = None
        if stride != 1:
            # Upstream registers the same norm as ``norm3`` and ``downsample.1``: the file holds both keys.
            self.norm3 = _norm(norm, cout)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class BasicEncoder(nn.Module):
    """1/8-resolution features: 7x7/2 stem, three residual stages (64, 96/2, 128/2), 1x1 head."""

    def __init__(self, output_dim: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.norm1 = _norm(norm, 64)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (96, 2), (128, 2)):
            layers.append(nn.Sequential(ResidualBlock(cin, cout, norm, stride), ResidualBlock(cout, cout, norm)))
            cin = cout
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = nn.Conv2d(128, output_dim, 1)
        for m in self.modules():  # upstream's init, so random-init files have its statistics
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


# -- update operator (upstream core/update.py) ---------------------------------------------------
class BasicMotionEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(CORR_LEVELS * (2 * CORR_RADIUS + 1) ** 2, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([c, f], 1))), flow], 1)


class SepConvGRU(nn.Module):
    """A ConvGRU run twice: 1x5 (horizontal) gates, then 5x1 (vertical) gates."""

    def __init__(self, hidden: int = HIDDEN, inp: int = 2 * 128) -> None:
        super().__init__()
        for suffix, k, p in (("1", (1, 5), (0, 2)), ("2", (5, 1), (2, 0))):
            for gate in "zrq":
                setattr(self, f"conv{gate}{suffix}", nn.Conv2d(hidden + inp, hidden, k, padding=p))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for s in "12":
            hx = torch.cat([h, x], 1)
            z = torch.sigmoid(getattr(self, f"convz{s}")(hx))
            r = torch.sigmoid(getattr(self, f"convr{s}")(hx))
            q = torch.tanh(getattr(self, f"convq{s}")(torch.cat([r * h, x], 1)))
            h = (1 - z) * h + z * q
        return h


class FlowHead(nn.Module):
    def __init__(self, cin: int = HIDDEN, hidden: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class BasicUpdateBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = BasicMotionEncoder()
        self.gru = SepConvGRU()
        self.flow_head = FlowHead()
        # Convex-upsampling weights: 9 neighbours x 8x8 sub-pixels; index 1 is a parameter-free ReLU.
        self.mask = nn.Sequential(nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 64 * 9, 1))

    def forward(self, net, inp, corr, flow):
        net = self.gru(net, torch.cat([inp, self.encoder(flow, corr)], 1))
        return net, 0.25 * self.mask(net), self.flow_head(net)  # upstream scales the mask by 1/4


# -- correlation (upstream core/corr.py CorrBlock) -----------------------------------------------
def _sample(img: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear ``img`` (N, C, H, W) at pixel coordinates ``xy`` (N, h, w, 2), zeros outside (align_corners)."""
    h, w = img.shape[-2:]
    # max(., 1): upstream divides by side - 1, which is 0 for a one-pixel level (see module docstring).
    grid = torch.stack([2 * xy[..., 0] / max(w - 1, 1) - 1, 2 * xy[..., 1] / max(h - 1, 1) - 1], -1)
    return F.grid_sample(img, grid, align_corners=True)


class CorrBlock:
    """All-pairs correlation of two feature maps, pooled into a pyramid and looked up in a window.

    ``__call__(coords)`` returns (B, levels * (2r+1)^2, H, W). Within a level's (2r+1)^2 channels,
    channel ``i * (2r+1) + j`` holds the x offset ``i - r`` and the y offset ``j - r``: upstream adds
    a (dy, dx) meshgrid to (x, y) coordinates, so its window is stored x-major, and the trained
    ``convc1`` expects that order.
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int = CORR_LEVELS,
                 radius: int = CORR_RADIUS) -> None:
        self.num_levels, self.radius = num_levels, radius
        b, dim, h, w = fmap1.shape
        corr = torch.einsum("bcn,bcm->bnm", fmap1.reshape(b, dim, -1), fmap2.reshape(b, dim, -1))
        corr = (corr / dim**0.5).reshape(b * h * w, 1, h, w)
        self.pyramid = [corr]
        for _ in range(num_levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.pyramid.append(corr)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        b, _, h, w = coords.shape
        d = torch.arange(-self.radius, self.radius + 1, device=coords.device, dtype=coords.dtype)
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), -1)  # [i, j] = (x offset d_i, y offset d_j)
        centre = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        out = [_sample(corr, centre / 2**lvl + delta).view(b, h, w, -1) for lvl, corr in enumerate(self.pyramid)]
        return torch.cat(out, -1).permute(0, 3, 1, 2).contiguous()


# -- the model (upstream core/raft.py) -----------------------------------------------------------
def coords_grid(b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """(b, 2, h, w) pixel coordinates, channel 0 = x, 1 = y."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs, ys]).float()[None].repeat(b, 1, 1, 1)


def upsample_flow(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Convex upsampling x8: each fine pixel is a softmax-weighted mix of its coarse 3x3 neighbourhood."""
    n, _, h, w = flow.shape
    weights = torch.softmax(mask.view(n, 1, 9, 8, 8, h, w), dim=2)
    neigh = F.unfold(8 * flow, 3, padding=1).view(n, 2, 9, 1, 1, h, w)
    up = (weights * neigh).sum(2)  # (n, 2, 8 rows, 8 cols, h, w)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(n, 2, 8 * h, 8 * w)


class RAFT(nn.Module):
    """Full RAFT. ``forward`` takes RGB in [0, 255] with sides divisible by 8 (see ``InputPadder``)
    and returns the final upsampled flow (B, 2, H, W), as upstream's ``test_mode=True`` second output."""

    def __init__(self) -> None:
        super().__init__()
        self.fnet = BasicEncoder(256, "instance")
        self.cnet = BasicEncoder(HIDDEN + CONTEXT, "batch")
        self.update_block = BasicUpdateBlock()

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 20) -> torch.Tensor:
        image1, image2 = 2 * (image1 / 255.0) - 1.0, 2 * (image2 / 255.0) - 1.0
        # One fnet pass over both images: instance norm is per sample, so this equals two passes.
        fmap1, fmap2 = self.fnet(torch.cat([image1, image2])).float().chunk(2)
        corr_fn = CorrBlock(fmap1, fmap2)
        net, inp = torch.split(self.cnet(image1), [HIDDEN, CONTEXT], dim=1)
        net, inp = torch.tanh(net), torch.relu(inp)
        n, _, h, w = image1.shape
        coords0 = coords_grid(n, h // 8, w // 8, image1.device)
        coords1 = coords0.clone()
        mask = None
        for _ in range(iters):
            flow = coords1 - coords0
            net, mask, delta = self.update_block(net, inp, corr_fn(coords1), flow)
            coords1 = coords1 + delta
        # Upstream upsamples after every iteration; in test mode only the last one is returned.
        return upsample_flow(coords1 - coords0, mask)


class InputPadder:
    """Replicate-pad (H, W) to multiples of 8, split evenly ("sintel" mode, the extra pixel at the end)."""

    def __init__(self, height: int, width: int) -> None:
        ph, pw = -height % 8, -width % 8
        self.pad_ = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)  # F.pad order: left, right, top, bottom
        self.shape = (height + ph, width + pw)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad_, mode="replicate")

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self.pad_
        return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


# -- weights ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _load(weight: ResolvedWeight, device: str) -> RAFT:
    # Keyed by the resolved file (path and sha256), not only its name: a cache switched from
    # random-init to real weights (or a test's tmp cache) never gets a stale model.
    model = RAFT()
    load_strict(model, read_state_dict(weight), f"RAFT ({weight.name}, {weight.path})")
    return model.to(device).eval().requires_grad_(False)


def load_raft(weights: str = "raft_things", device: str = "cpu") -> RAFT:
    """The model with manifest entry ``weights`` loaded strictly, once per process and device."""
    return _load(resolve(weights), device)


@random_initialiser("raft_things")
def write_random_raft(path: Path) -> None:
    """A random-init checkpoint in the upstream layout, ``module.`` prefix included (DataParallel)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)  # reproducible random-init files
        sd = RAFT().state_dict()
    save_random({f"module.{k}": v for k, v in sd.items()}, path)


# -- the flow backend ------------------------------------------------------------------------------
@register_flow_backend
class RAFTFlow(FlowBackend):
    """RAFT flow (H, W, 2) float32 in input pixels from uint8 RGB frames (gray is repeated to 3 channels).

    ``flows`` runs up to ``batch`` pairs per forward pass (per-pair calls are the slow path). The
    all-pairs correlation volume takes (H/8 * W/8)^2 * 4 bytes per pair, 165 MB at 480x854 but
    4 GB at 1080p: lower ``batch`` for large frames. ``batch`` is not part of the identity:
    batching changes the numbers only by float rounding (norms are per sample, batch norm runs
    in eval mode). ``upscale`` must stay 1: VBench runs RAFT at full resolution, and flow
    measured on upscaled frames is not what its thresholds were set on. An identity computed
    from random-init weights ends in ``/random-weights``.
    """

    name = "raft"
    version = "1"
    defaults: ClassVar[dict[str, Any]] = {"weights": "raft_things", "iters": 20, "upscale": 1, "device": "cpu",
                                          "batch": 8}
    AUTO_MIN_SIDE = 1  # unused: upscale is fixed to 1
    NOT_IN_IDENTITY = ("batch",)
    UPSCALE_HINT = "RAFT runs at full resolution"

    def _validate(self) -> None:
        o = self.options
        if o["upscale"] != 1:
            raise ValueError(f"{self.name}: upscale must be 1 ({self.UPSCALE_HINT}), got {o['upscale']!r}")
        for key in ("iters", "batch"):
            if isinstance(o[key], bool) or not isinstance(o[key], int) or o[key] < 1:
                raise ValueError(f"{self.name}: {key} must be an integer >= 1, got {o[key]!r}")
        manifest_entry(o["weights"])  # an unknown name fails now, not at the first frame
        torch.device(o["device"])

    @property
    def identity(self) -> str:
        changed = {k: v for k, v in self.options.items() if v != self.defaults[k] and k not in self.NOT_IN_IDENTITY}
        ident = f"{self.name}({','.join(f'{k}={v}' for k, v in sorted(changed.items()))})" if changed else self.name
        return ident + ("/random-weights" if resolve(self.options["weights"]).is_random else "")

    def __repr__(self) -> str:
        try:
            return super().__repr__()
        except WeightsError:  # no weight file yet: still printable
            return f"<{type(self).__name__} {self.name} {self.options}>"

    def _prepare(self, frame: np.ndarray, factor: int) -> torch.Tensor:
        img = torch.from_numpy(np.ascontiguousarray(frame)).float()
        return img[None].expand(3, -1, -1) if img.ndim == 2 else img.permute(2, 0, 1)

    def _run(self, first: Sequence[torch.Tensor], second: Sequence[torch.Tensor],
             unpad: bool = True) -> list[np.ndarray]:
        h, w = first[0].shape[-2:]
        padder = InputPadder(h, w)
        if min(padder.shape) < MIN_PADDED_SIDE:
            raise ValueError(f"raft: frames of {h}x{w} pad to {padder.shape[0]}x{padder.shape[1]}; RAFT's "
                             f"{CORR_LEVELS}-level correlation pyramid needs both sides >= {MIN_PADDED_SIDE} "
                             f"(frames of at least {MIN_PADDED_SIDE - 7} px); use a weights-free backend (dis)")
        dev = self.options["device"]
        model = load_raft(self.options["weights"], dev)
        with torch.inference_mode():
            a = padder.pad(torch.stack(list(first)).to(dev))
            b = padder.pad(torch.stack(list(second)).to(dev))
            flow = model(a, b, iters=self.options["iters"])
            flow = padder.unpad(flow) if unpad else flow
        return list(flow.permute(0, 2, 3, 1).float().cpu().numpy())

    def _estimate(self, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        return self._run([a], [b])[0]

    def compute_flows(self, frames: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]],
                      unpad: bool = True) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        step = self.options["batch"]
        for start in range(0, len(pairs), step):  # frames converted per batch: memory stays O(batch)
            chunk = pairs[start:start + step]
            first = [self._prepare(frames[i], 1) for i, _ in chunk]
            second = [self._prepare(frames[j], 1) for _, j in chunk]
            out.extend(self._run(first, second) if unpad else self._run(first, second, unpad=False))
        return out

    def padded_flows(self, frames: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """RAFT's output on the replicate-padded frames (sides multiples of 8), not unpadded: the field on
        which VBench's dynamic degree and static filter take their top-x % statistics."""
        return self._cached(frames, pairs, self.identity + "#padded",
                            lambda f, p: self.compute_flows(f, p, unpad=False))
