"""SEA-RAFT (Wang, Lipson & Deng, ECCV 2024) optical flow, loading the upstream Spring-M checkpoint strictly.

Our own implementation of princeton-vl/SEA-RAFT's ``core/raft.py`` with the medium configuration
of ``config/eval/spring-M.json`` (ResNet-34-style encoders of 64/128/256 channels, hidden and
context dim 128, correlation radius 4 over 4 levels, two ConvNeXt refinement blocks). Its
``state_dict()`` has exactly the upstream keys and shapes, so the Hugging Face file
``MemorySlices/Tartan-C-T-TSKH-spring540x960-M/model.safetensors`` loads with ``load_strict``.

What upstream does: the context network reads both frames (6 channels) and regresses an initial
flow before any correlation; each of the ``iters`` iterations looks up a 4-level correlation
pyramid (all pairs of fmap1 with fmap2 bilinearly halved per level, not RAFT's pooled volume),
refines the hidden state with ConvNeXt blocks and adds the flow head's first two channels; the
last flow is convex-upsampled x8. Inference follows upstream's evaluate.py/custom.py ``calc_flow``
with the spring-M config: RGB in [0, 255] bilinearly resized by 2**scale with scale = -1
(``align_corners=False``, no antialiasing), replicate padding to a multiple of 8 split evenly
("sintel" mode), 4 iterations, the final flow unpadded, bilinearly resized back by 2**-scale and
multiplied by 2**-scale.

Checked against upstream's own code on the same random-init file (CPU, float32, one pair per
call): identical output, bit for bit, at 256x320, 271x481 (on upstream's 270x480) and 480x854.

Deliberate differences, none of which changes a number where upstream runs:

* The uncertainty (mixture-of-Laplace) channels of the flow head and the per-iteration upsampled
  predictions are not computed: only the final flow is returned, as ``output['flow'][-1]``.
* The encoders' blocks are written here (upstream's ``core/layer.py`` BasicBlock, conv biases
  included); torchvision is not used. Upstream's constructor also copies torchvision's ImageNet
  ResNet-34 weights into the encoders, which only matters for training: the random-init file
  written here uses upstream's Kaiming initialisation without them.
* The Hugging Face file was written by ``PyTorchModelHubMixin`` (safetensors ``save_model``),
  which stores a tensor shared under two names once: each downsampling block's norm is
  registered as both ``bn3`` and ``downsample.1`` and the file keeps ``bn3``. The loader fills in
  the dropped alias from the one present (a file holding both, such as the Google Drive ``.pth``
  saved with ``torch.save``, also loads; both present with different values is refused), then
  loads strictly. The random-init file is written with ``save_model`` too, i.e. in that layout.
* Odd frame sides: at scale -1 upstream returns a flow one pixel short (the input is halved with
  floor, then doubled). We add that last row/column by replicating its neighbour, which is what
  upstream's bilinear resize (same coordinate mapping, edge-clamped) gives at that pixel.
* Small frames: upstream halves fmap2 once more after the last pyramid level and discards the
  result, which fails in ``F.interpolate`` when the padded (resized) sides are below 128 px. We
  skip that unused step, refuse padded sides below 64 px (a pyramid level would be empty: frames
  below 114 px at scale -1) and, for padded sides of 64-127 px whose coarsest level is one pixel
  wide (where upstream's sampler would divide by zero, side - 1), sample that level with the same
  zeros-outside bilinear rule on a zero-padded copy. From 128 px on, the arithmetic is upstream's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.scorers.backends.flow import register_flow_backend
from harness.scorers.backends.real.common import load_strict, read_state_dict
from harness.scorers.backends.real.raft import BasicMotionEncoder, InputPadder, RAFTFlow, coords_grid, upsample_flow
from harness.weights import ResolvedWeight, WeightsError, random_initialiser, resolve

# config/eval/spring-M.json ("pretrain": "resnet34" sets the blocks per stage)
DIM = 128
INITIAL_DIM, BLOCK_DIMS, STAGE_BLOCKS = 64, (64, 128, 256), (3, 4, 6)
CORR_LEVELS, CORR_RADIUS = 4, 4
NUM_BLOCKS = 2
ITERS, SCALE = 4, -1
MIN_PADDED_SIDE = 8 * 2 ** (CORR_LEVELS - 1)  # the coarsest pyramid level keeps >= 1 pixel
SCALES = range(-2, 2)  # allowed values of the ``scale`` option


# -- feature and context encoders (upstream core/extractor.py ResNetFPN, core/layer.py BasicBlock) -------------
class BasicBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU with a residual; a 1x1 conv + BN shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            # Upstream registers the same norm as ``bn3`` and ``downsample.1``: its state dict holds both keys.
            self.bn3 = nn.BatchNorm2d(cout)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), self.bn3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class ResNetFPN(nn.Module):
    """1/8-resolution features: 7x7/2 stem, stages of 3, 4 and 6 blocks (64, 128/2, 256/2), 1x1 head."""

    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, INITIAL_DIM, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(INITIAL_DIM)
        cin, stages = INITIAL_DIM, []
        for cout, stride, num in zip(BLOCK_DIMS, (1, 2, 2), STAGE_BLOCKS, strict=True):
            stages.append(
                nn.Sequential(BasicBlock(cin, cout, stride), *(BasicBlock(cout, cout) for _ in range(num - 1)))
            )
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.final_conv = nn.Conv2d(BLOCK_DIMS[-1], output_dim, 1)
        for m in self.modules():  # upstream's init, so random-init files have its statistics
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.final_conv(self.layer3(self.layer2(self.layer1(x))))


# -- update operator (upstream core/update.py, core/layer.py ConvNextBlock) -------------------------------------
class ConvNextBlock(nn.Module):
    """Depthwise 7x7, channels-last LayerNorm, MLP x4 with GELU, layer scale ``gamma``, residual, 1x1 to ``cout``."""

    def __init__(self, dim: int, cout: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * cout)
        self.pwconv2 = nn.Linear(4 * cout, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.final = nn.Conv2d(dim, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return self.final(x + y.permute(0, 3, 1, 2))


class BasicUpdateBlock(nn.Module):
    """RAFT's motion encoder (same layers at dim 128), then ConvNeXt blocks instead of RAFT's GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = BasicMotionEncoder()
        self.refine = nn.ModuleList(ConvNextBlock(3 * DIM, DIM) for _ in range(NUM_BLOCKS))

    def forward(self, net: torch.Tensor, context: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor):
        inp = torch.cat([context, self.encoder(flow, corr)], 1)
        for block in self.refine:
            net = block(torch.cat([net, inp], 1))
        return net


# -- correlation (upstream core/corr.py CorrBlock) ------------------------------------------------------------
def _sample(img: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear ``img`` (N, C, H, W) at pixel coordinates ``xy`` (N, h, w, 2), zeros outside (align_corners)."""
    h, w = img.shape[-2:]
    if h == 1 or w == 1:  # upstream divides by side - 1 = 0 (see module docstring): the same rule on a padded copy
        img, xy, h, w = F.pad(img, (1, 1, 1, 1)), xy + 1, h + 2, w + 2
    grid = torch.cat([2 * xy[..., :1] / (w - 1) - 1, 2 * xy[..., 1:] / (h - 1) - 1], -1)
    return F.grid_sample(img, grid, align_corners=True)


class CorrBlock:
    """Correlation of fmap1 with a pyramid of fmap2 (halved bilinearly per level), looked up in a window.

    Level ``l`` correlates every fmap1 pixel with fmap2 resized by 2**-l and is read at coords / 2**l.
    ``__call__(coords)`` returns (B, levels * (2r+1)^2, H, W); within a level, channel ``i * (2r+1) + j``
    holds the x offset ``i - r`` and the y offset ``j - r`` (upstream's x-major window, as in RAFT).
    """

    def __init__(
        self, fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int = CORR_LEVELS, radius: int = CORR_RADIUS
    ) -> None:
        self.radius = radius
        b, dim, h, w = fmap1.shape
        f1 = fmap1.reshape(b, dim, h * w).transpose(1, 2)
        self.pyramid = []
        for lvl in range(num_levels):
            if lvl:  # upstream halves once more after the last level and discards it (see module docstring)
                fmap2 = F.interpolate(fmap2, scale_factor=0.5, mode="bilinear", align_corners=False)
            h2, w2 = fmap2.shape[-2:]
            corr = f1 @ fmap2.reshape(b, dim, h2 * w2) / math.sqrt(dim)
            self.pyramid.append(corr.reshape(b * h * w, 1, h2, w2))

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        b, _, h, w = coords.shape
        d = torch.arange(-self.radius, self.radius + 1, device=coords.device, dtype=coords.dtype)
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), -1)  # [i, j] = (x offset d_i, y offset d_j)
        centre = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        out = [_sample(corr, centre / 2**lvl + delta).view(b, h, w, -1) for lvl, corr in enumerate(self.pyramid)]
        return torch.cat(out, -1).permute(0, 3, 1, 2).contiguous()


# -- the model (upstream core/raft.py) -------------------------------------------------------------------------
class SEARAFT(nn.Module):
    """SEA-RAFT-M. ``forward`` takes RGB in [0, 255] with sides divisible by 8 (see ``InputPadder``) and
    returns the final upsampled flow (B, 2, H, W), upstream's ``output['flow'][-1]`` before unpadding."""

    def __init__(self) -> None:
        super().__init__()
        self.cnet = ResNetFPN(6, 2 * DIM)
        self.init_conv = nn.Conv2d(2 * DIM, 2 * DIM, 3, padding=1)
        # Convex-upsampling weights (9 neighbours x 8x8 sub-pixels) and flow(2) + mixture weight(2) + log b(2);
        # index 1 of each is a parameter-free ReLU.
        self.upsample_weight = nn.Sequential(
            nn.Conv2d(DIM, 2 * DIM, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * DIM, 64 * 9, 1)
        )
        self.flow_head = nn.Sequential(
            nn.Conv2d(DIM, 2 * DIM, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * DIM, 6, 3, padding=1)
        )
        self.fnet = ResNetFPN(3, 2 * DIM)
        self.update_block = BasicUpdateBlock()

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = ITERS) -> torch.Tensor:
        # contiguous() as upstream: a channels-last input would otherwise select other conv kernels (rounding).
        image1, image2 = (2 * (image1 / 255.0) - 1.0).contiguous(), (2 * (image2 / 255.0) - 1.0).contiguous()
        net, context = torch.split(self.init_conv(self.cnet(torch.cat([image1, image2], 1))), [DIM, DIM], dim=1)
        flow = self.flow_head(net)[:, :2]  # the directly regressed initial flow (1/8 resolution)
        if iters:
            # One fnet pass over both images: batch norm in eval mode is per sample, so this equals two passes.
            corr_fn = CorrBlock(*self.fnet(torch.cat([image1, image2])).chunk(2))
            n, _, h, w = flow.shape
            coords0 = coords_grid(n, h, w, flow.device)
            for _ in range(iters):
                net = self.update_block(net, context, corr_fn(coords0 + flow), flow)
                flow = flow + self.flow_head(net)[:, :2]
        # Upstream upsamples after every iteration; only the last one is returned here.
        return upsample_flow(flow, 0.25 * self.upsample_weight(net))


def _resize(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bilinear resize by 2**scale as upstream's ``calc_flow`` (output side = floor(side * 2**scale))."""
    return x if scale == 0 else F.interpolate(x, scale_factor=2.0**scale, mode="bilinear", align_corners=False)


def restore_flow(flow: torch.Tensor, scale: int, height: int, width: int) -> torch.Tensor:
    """Flow computed on frames resized by 2**scale, back at (height, width) in input pixels.

    As upstream: bilinear resize by 2**-scale, times 2**-scale. Where the resized side was floored (odd
    sides at scale -1) the missing last rows/columns replicate their neighbour (see module docstring).
    """
    flow = _resize(flow, -scale) * 2.0**-scale
    short_h, short_w = height - flow.shape[-2], width - flow.shape[-1]
    return F.pad(flow, (0, short_w, 0, short_h), mode="replicate") if short_h or short_w else flow


def min_frame_side(scale: int = SCALE) -> int:
    """The smallest frame side whose resized, padded side keeps every pyramid level non-empty."""
    return math.ceil((MIN_PADDED_SIDE - 7) / 2.0**scale)


# -- weights ---------------------------------------------------------------------------------------------------
def _alias_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(``...bn3.x``, ``...downsample.1.x``) state-dict names of one tensor, for every downsampling block."""
    own = model.state_dict()
    return [(k, k.replace(".bn3.", ".downsample.1.")) for k in own if ".bn3." in k]


def fill_aliases(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The file's tensors with the alias that safetensors' ``save_model`` dropped restored from its twin."""
    sd = dict(state_dict)
    for a, b in _alias_pairs(model):
        if a in sd and b in sd:
            if sd[a].shape == sd[b].shape and not torch.equal(sd[a], sd[b]):
                raise WeightsError(
                    f"{what}: {a} and {b} are one tensor upstream but differ in the file; is it the right file?"
                )
        elif a in sd or b in sd:
            sd[b if a in sd else a] = sd[a if a in sd else b]
    return sd


def load_checkpoint(weight: ResolvedWeight) -> SEARAFT:
    """A fresh model with ``weight`` loaded strictly (after restoring the deduplicated aliases)."""
    model = SEARAFT()
    what = f"SEA-RAFT ({weight.name}, {weight.path})"
    load_strict(model, fill_aliases(model, read_state_dict(weight), what), what)
    return model


@functools.lru_cache(maxsize=4)
def _load(weight: ResolvedWeight, device: str) -> SEARAFT:
    # Keyed by the resolved file (path and sha256), not only its name: a cache switched from
    # random-init to real weights (or a test's tmp cache) never gets a stale model.
    return load_checkpoint(weight).to(device).eval().requires_grad_(False)


def load_sea_raft(weights: str = "sea_raft", device: str = "cpu") -> SEARAFT:
    """The model with manifest entry ``weights`` loaded strictly, once per process and device."""
    return _load(resolve(weights), device)


@random_initialiser("sea_raft")
def write_random_sea_raft(path: Path) -> None:
    """A random-init checkpoint as upstream's Hugging Face file: safetensors ``save_model`` (``bn3`` kept)."""
    from safetensors.torch import save_model

    with torch.random.fork_rng():
        torch.manual_seed(0)  # reproducible random-init files
        model = SEARAFT()
    save_model(model, str(path))


# -- the flow backend ------------------------------------------------------------------------------------------
@register_flow_backend
class SEARAFTFlow(RAFTFlow):
    """SEA-RAFT flow (H, W, 2) float32 in input pixels from uint8 RGB frames (gray is repeated to 3 channels).

    Defaults are upstream's spring-M evaluation: ``iters`` 4, ``scale`` -1 (the model sees frames
    resized by 2**scale). ``flows`` runs up to ``batch`` pairs per forward pass (per-pair calls are the
    slow path); the correlation pyramid takes about 1.33 (H/16 * W/16)^2 * 4 bytes per pair at scale -1,
    14 MB at 480x854 and 350 MB at 1080p. ``batch`` is not part of the identity: batching changes the
    numbers only by float rounding (batch and layer norms are per sample in eval mode). ``upscale``
    must stay 1 (resizing is ``scale``'s job). An identity computed from random-init weights ends in
    ``/random-weights``.
    """

    name = "sea-raft"
    version = "1"
    defaults: ClassVar[dict[str, Any]] = {
        "weights": "sea_raft",
        "iters": ITERS,
        "scale": SCALE,
        "upscale": 1,
        "device": "cpu",
        "batch": 8,
    }
    UPSCALE_HINT = "use scale to resize"

    def _validate(self) -> None:
        o = self.options
        if isinstance(o["scale"], bool) or not isinstance(o["scale"], int) or o["scale"] not in SCALES:
            raise ValueError(
                f"sea-raft: scale must be an integer in [{SCALES[0]}, {SCALES[-1]}] (frames are "
                f"resized by 2**scale; upstream's spring-M uses -1), got {o['scale']!r}"
            )
        super()._validate()  # upscale, iters, batch, weights, device as RAFT

    def padded_flows(self, frames, pairs) -> list[np.ndarray]:
        """SEA-RAFT resizes before it pads and no VBench statistic reads its field: the unpadded flow."""
        return self.flows(frames, pairs)

    def _run(self, first: Sequence[torch.Tensor], second: Sequence[torch.Tensor]) -> list[np.ndarray]:
        h, w = first[0].shape[-2:]
        scale = self.options["scale"]
        rh, rw = math.floor(h * 2.0**scale), math.floor(w * 2.0**scale)
        padder = InputPadder(rh, rw)
        if min(padder.shape) < MIN_PADDED_SIDE:
            raise ValueError(
                f"sea-raft: frames of {h}x{w} are resized to {rh}x{rw} (scale {scale}) and padded to "
                f"{padder.shape[0]}x{padder.shape[1]}; SEA-RAFT's {CORR_LEVELS}-level correlation "
                f"pyramid needs both padded sides >= {MIN_PADDED_SIDE} (frames of at least "
                f"{min_frame_side(scale)} px at scale {scale}); use a weights-free backend (dis)"
            )
        dev = self.options["device"]
        model = load_sea_raft(self.options["weights"], dev)
        with torch.inference_mode():
            a = padder.pad(_resize(torch.stack(list(first)).to(dev), scale))
            b = padder.pad(_resize(torch.stack(list(second)).to(dev), scale))
            flow = restore_flow(padder.unpad(model(a, b, iters=self.options["iters"])), scale, h, w)
        return list(flow.permute(0, 2, 3, 1).float().cpu().numpy())
