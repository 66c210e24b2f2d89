"""AMT-S (Li et al., CVPR 2023, "AMT: All-Pairs Multi-Field Transforms"): VBench's motion_smoothness interpolator.

Our modules carry the parameter names and shapes of upstream's ``networks/AMT-S.py`` (``Model(corr_radius=3,
corr_lvls=4, num_flows=3)``, vendored by VBench in ``vbench/third_party/amt``), so the published ``amt-s.pth``
(``{"state_dict": ...}``) loads strictly. Inference follows VBench's ``MotionSmoothness.motion_score`` with the
scale factor pinned to 1: frames / 255, replicate-padded (centred) to a multiple of 16, t = 0.5, prediction
clamped to [0, 1], unpadded and * 255 (the caller clips and truncates to uint8 like ``tensor2img``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.scorers.backends.interpolation import InterpolationBackend, register_interpolation_backend
from harness.scorers.backends.real.common import load_strict, read_state_dict
from harness.weights import ResolvedWeight, random_initialiser, resolve

DIVISOR = 16
# The 4-level correlation pyramid starts at 1/8 scale, so its last level is 1/64: at 1 px upstream's
# pixel-to-grid normalisation divides by zero (NaN everywhere), at 0 px avg_pool2d fails.
MIN_PADDED_SIDE = 128


def _resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def _warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp by ``flow`` (pixels), border padding, on upstream's normalised [-1, 1] grid."""
    b, _, h, w = flow.shape
    xs = torch.linspace(-1.0, 1.0, w).to(img).view(1, 1, w).expand(b, h, w)
    ys = torch.linspace(-1.0, 1.0, h).to(img).view(1, h, 1).expand(b, h, w)
    grid = torch.stack([xs + flow[:, 0] / ((w - 1.0) / 2.0), ys + flow[:, 1] / ((h - 1.0) / 2.0)], -1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _convrelu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.PReLU(cout))


class _Bottleneck(nn.Module):
    """RAFT bottleneck block with (parameter-free) instance norm."""

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        mid = planes // 4
        self.conv1 = nn.Conv2d(cin, mid, 1)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1)
        self.conv3 = nn.Conv2d(mid, planes, 1)
        self.norm1, self.norm2, self.norm3 = nn.InstanceNorm2d(mid), nn.InstanceNorm2d(mid), nn.InstanceNorm2d(planes)
        self.downsample = (None if stride == 1 else
                           nn.Sequential(nn.Conv2d(cin, planes, 1, stride), nn.InstanceNorm2d(planes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = F.relu(self.norm3(self.conv3(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class _FeatureEncoder(nn.Module):
    """RAFT's small encoder: 84-channel features at 1/8 scale for the all-pairs correlation."""

    def __init__(self, out_dim: int = 84) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 7, 2, 3)
        self.norm1 = nn.InstanceNorm2d(32)
        self.layer1 = nn.Sequential(_Bottleneck(32, 32, 1), _Bottleneck(32, 32, 1))
        self.layer2 = nn.Sequential(_Bottleneck(32, 64, 2), _Bottleneck(64, 64, 1))
        self.layer3 = nn.Sequential(_Bottleneck(64, 96, 2), _Bottleneck(96, 96, 1))
        self.conv2 = nn.Conv2d(96, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class _PyramidEncoder(nn.Module):
    """IFRNet context pyramid: 1/2, 1/4, 1/8, 1/16 scale features of one frame."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.depth = len(channels)
        for i, (cin, cout) in enumerate(zip((3, *channels[:-1]), channels, strict=True), 1):
            self.add_module(f"pyramid{i}", nn.Sequential(_convrelu(cin, cout, 2), _convrelu(cout, cout)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i in range(1, self.depth + 1):
            x = getattr(self, f"pyramid{i}")(x)
            feats.append(x)
        return feats


class _ResBlock(nn.Module):
    """IFRNet residual block: the last ``side`` channels get an extra conv after each main conv."""

    def __init__(self, ch: int, side: int) -> None:
        super().__init__()
        self.side = side
        self.conv1, self.conv2 = _convrelu(ch, ch), _convrelu(side, side)
        self.conv3, self.conv4 = _convrelu(ch, ch), _convrelu(side, side)
        self.conv5 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.prelu = nn.PReLU(ch)

    def _side(self, x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
        return torch.cat([x[:, :-self.side], conv(x[:, -self.side:])], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self._side(self.conv1(x), self.conv2))
        return self.prelu(x + self.conv5(self._side(out, self.conv4)))


class _Decoder(nn.Module):
    """One IFRNet decoder level (upstream's InitDecoder / IntermediateDecoder / MultiFlowDecoder weights);
    the model does the warping and flow bookkeeping around ``convblock``."""

    def __init__(self, cin: int, mid: int, cout: int, skip: int) -> None:
        super().__init__()
        self.convblock = nn.Sequential(_convrelu(cin, mid), _ResBlock(mid, skip),
                                       nn.ConvTranspose2d(mid, cout, 4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convblock(x)


class _UpdateBlock(nn.Module):
    """RAFT-style residual update of the feature and both flows from the looked-up correlation (at 1/8 scale:
    ``scale`` brings the level's features down to it and the deltas back up)."""

    def __init__(self, cdim: int, scale: int, corr_planes: int, hidden: int = 76, flow_dim: int = 20,
                 corr_dim: int = 64, fc_dim: int = 68) -> None:
        super().__init__()
        self.scale = scale
        self.convc1 = nn.Conv2d(corr_planes, corr_dim, 1)
        self.convf1 = nn.Conv2d(4, 2 * flow_dim, 7, padding=3)
        self.convf2 = nn.Conv2d(2 * flow_dim, flow_dim, 3, padding=1)
        self.conv = nn.Conv2d(corr_dim + flow_dim, fc_dim, 3, padding=1)

        def head(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.LeakyReLU(0.1),
                                 nn.Conv2d(hidden, cout, 3, padding=1))

        self.gru = head(fc_dim + 4 + cdim, hidden)  # upstream's name; plain convs, no recurrence
        self.feat_head = head(hidden, cdim)
        self.flow_head = head(hidden, 4)

    def forward(self, net: torch.Tensor, flow: torch.Tensor, corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale != 1:
            net = _resize(net, 1 / self.scale)
        cor = F.leaky_relu(self.convc1(corr), 0.1)
        flo = F.leaky_relu(self.convf2(F.leaky_relu(self.convf1(flow), 0.1)), 0.1)
        inp = F.leaky_relu(self.conv(torch.cat([cor, flo], 1)), 0.1)
        out = self.gru(torch.cat([inp, flow, net], 1))
        d_net, d_flow = self.feat_head(out), self.flow_head(out)
        if self.scale != 1:
            d_net, d_flow = _resize(d_net, self.scale), self.scale * _resize(d_flow, self.scale)
        return d_net, d_flow


class _BidirCorr:
    """All-pairs correlation of the 1/8-scale features, pooled into a pyramid in both directions."""

    def __init__(self, fmap0: torch.Tensor, fmap1: torch.Tensor, levels: int, radius: int) -> None:
        b, d, h, w = fmap0.shape
        self.radius = radius
        corr = fmap0.view(b, d, h * w).transpose(1, 2) @ fmap1.view(b, d, h * w) / torch.tensor(float(d)).sqrt()
        fwd = corr.reshape(b * h * w, 1, h, w)  # per pixel of frame 0: scores over frame 1
        bwd = corr.transpose(1, 2).reshape(b * h * w, 1, h, w)  # per pixel of frame 1: scores over frame 0
        self.pyramids: list[list[torch.Tensor]] = [[fwd], [bwd]]
        for _ in range(levels - 1):
            for p in self.pyramids:
                p.append(F.avg_pool2d(p[-1], 2, stride=2))

    def _lookup(self, pyramid: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        b, _, h, w = coords.shape
        r = self.radius
        d = torch.arange(-r, r + 1, dtype=coords.dtype, device=coords.device)
        # RAFT's window layout (the trained channel order): the first window axis moves x, the second y.
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), -1)
        centre = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        out = []
        for i, corr in enumerate(pyramid):
            pts = centre / 2**i + delta
            ch, cw = corr.shape[-2:]
            grid = torch.cat([2 * pts[..., :1] / (cw - 1) - 1, 2 * pts[..., 1:] / (ch - 1) - 1], -1)
            out.append(F.grid_sample(corr, grid, align_corners=True).view(b, h, w, -1))
        return torch.cat(out, -1).permute(0, 3, 1, 2).contiguous()

    def __call__(self, coords0: torch.Tensor, coords1: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._lookup(self.pyramids[0], coords0), self._lookup(self.pyramids[1], coords1)], 1)


class AMTS(nn.Module):
    """AMT-S with upstream's parameter layout; ``forward`` returns upstream's ``imgt_pred`` (eval mode)."""

    def __init__(self, corr_radius: int = 3, corr_lvls: int = 4, num_flows: int = 3,
                 channels: tuple[int, ...] = (20, 32, 44, 56), skip_channels: int = 20) -> None:
        super().__init__()
        self.radius, self.corr_levels, self.num_flows = corr_radius, corr_lvls, num_flows
        c = channels
        self.feat_encoder = _FeatureEncoder(84)
        self.encoder = _PyramidEncoder(c)
        self.decoder4 = _Decoder(2 * c[3] + 1, 2 * c[3], c[2] + 4, skip_channels)
        self.decoder3 = _Decoder(3 * c[2] + 4, 3 * c[2], c[1] + 4, skip_channels)
        self.decoder2 = _Decoder(3 * c[1] + 4, 3 * c[1], c[0] + 4, skip_channels)
        self.decoder1 = _Decoder(3 * c[0] + 4, 3 * c[0], 8 * num_flows, skip_channels)
        planes = 2 * corr_lvls * (2 * corr_radius + 1) ** 2
        self.update4 = _UpdateBlock(c[2], 1, planes)
        self.update3 = _UpdateBlock(c[1], 2, planes)
        self.update2 = _UpdateBlock(c[0], 4, planes)
        self.comb_block = nn.Sequential(nn.Conv2d(3 * num_flows, 6 * num_flows, 3, 1, 1), nn.PReLU(6 * num_flows),
                                        nn.Conv2d(6 * num_flows, 3, 3, 1, 1))

    @staticmethod
    def _refine(update: _UpdateBlock, corr: _BidirCorr, coord: torch.Tensor, flow0: torch.Tensor,
                flow1: torch.Tensor, ft: torch.Tensor, embt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Flows t->0 and t->1 rescaled to 1->0 and 0->1 under linear motion pick the correlation windows.
        f0, f1 = flow0, flow1
        if update.scale != 1:
            f0, f1 = _resize(flow0, 1 / update.scale) / update.scale, _resize(flow1, 1 / update.scale) / update.scale
        c = corr(coord + f1 / embt, coord + f0 / (1.0 - embt))
        d_ft, d_flow = update(ft, torch.cat([f0, f1], 1), c)
        return flow0 + d_flow[:, :2], flow1 + d_flow[:, 2:], ft + d_ft

    @staticmethod
    def _decoder_input(ft: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, flow0: torch.Tensor,
                       flow1: torch.Tensor) -> torch.Tensor:
        return torch.cat([ft, _warp(f0, flow0), _warp(f1, flow1), flow0, flow1], 1)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, embt: torch.Tensor) -> torch.Tensor:
        """``img0``/``img1``: (B, 3, H, W) in [0, 1], H and W multiples of 16; ``embt``: (B, 1, 1, 1) time."""
        mean = torch.cat([img0, img1], 2).mean(1, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
        img0, img1 = img0 - mean, img1 - mean
        b, _, h, w = img0.shape
        ys, xs = torch.meshgrid(torch.arange(h // 8, device=img0.device), torch.arange(w // 8, device=img0.device),
                                indexing="ij")
        coord = torch.stack([xs, ys]).float()[None].repeat(b, 1, 1, 1)
        fmap0, fmap1 = self.feat_encoder(torch.cat([img0, img1])).split(b)
        corr = _BidirCorr(fmap0, fmap1, self.corr_levels, self.radius)
        f0, f1 = self.encoder(img0), self.encoder(img1)

        out = self.decoder4(torch.cat([f0[3], f1[3], embt.expand(-1, 1, *f0[3].shape[2:])], 1))
        flow0, flow1, ft = self._refine(self.update4, corr, coord, out[:, :2], out[:, 2:4], out[:, 4:], embt)
        for decoder, update, lvl in ((self.decoder3, self.update3, 2), (self.decoder2, self.update2, 1)):
            out = decoder(self._decoder_input(ft, f0[lvl], f1[lvl], flow0, flow1))
            flow0 = out[:, :2] + 2.0 * _resize(flow0, 2.0)
            flow1 = out[:, 2:4] + 2.0 * _resize(flow1, 2.0)
            flow0, flow1, ft = self._refine(update, corr, coord, flow0, flow1, out[:, 4:], embt)

        # Full resolution: num_flows candidate flow pairs, blend masks and residuals, fused by comb_block.
        n = self.num_flows
        out = self.decoder1(self._decoder_input(ft, f0[0], f1[0], flow0, flow1))
        d0, d1, mask, res = out.split([2 * n, 2 * n, n, 3 * n], 1)
        flow0 = d0 + 2.0 * _resize(flow0, 2.0).repeat(1, n, 1, 1)
        flow1 = d1 + 2.0 * _resize(flow1, 2.0).repeat(1, n, 1, 1)
        mask = torch.sigmoid(mask).reshape(b * n, 1, h, w)
        warped0 = _warp(img0.repeat_interleave(n, 0), flow0.reshape(b * n, 2, h, w))
        warped1 = _warp(img1.repeat_interleave(n, 0), flow1.reshape(b * n, 2, h, w))
        cands = mask * warped0 + (1 - mask) * warped1 + mean.repeat_interleave(n, 0) + res.reshape(b * n, 3, h, w)
        cands = cands.reshape(b, n, 3, h, w)
        pred = cands.mean(1) + self.comb_block(cands.view(b, 3 * n, h, w))
        return pred.clamp(0, 1)


@random_initialiser("amt_s")
def _write_random(path: Path) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        sd = AMTS().state_dict()
    # Upstream's file wraps the weights: VBench loads ``ckpt['state_dict']``.
    torch.save({"state_dict": {k: v.clone().contiguous() for k, v in sd.items()}}, path)


@functools.cache
def _load_model(weight: ResolvedWeight, device: str) -> AMTS:
    model = AMTS()
    load_strict(model, read_state_dict(weight), f"AMT-S ({weight.path})")
    return model.to(device).eval()


class AMTInterpolator(InterpolationBackend):
    """Mid-frame interpolation with AMT-S at scale 1, as VBench's motion_smoothness (one process-wide model)."""

    name = "amt-s"

    def __init__(self, weights: str = "amt_s", device: str = "cpu", batch: int = 8) -> None:
        self.weight = resolve(weights)  # fail at construction, naming the file and the prefetch command
        self.device = device
        self.batch = max(1, int(batch))

    @property
    def identity(self) -> str:
        return "amt-s(scale=1)" + ("/random-weights" if self.weight.is_random else "")

    def __call__(self, a: np.ndarray, c: np.ndarray) -> np.ndarray:
        return self.interpolate_pairs(np.asarray(a)[None], np.asarray(c)[None])[0]

    def interpolate_pairs(self, frames_a: np.ndarray, frames_c: np.ndarray) -> np.ndarray:
        """Middle frames of N pairs, (N, H, W, 3) uint8 RGB each -> (N, H, W, 3) float32 in [0, 255]."""
        frames_a, frames_c = np.asarray(frames_a), np.asarray(frames_c)
        if frames_a.shape != frames_c.shape or frames_a.ndim != 4 or frames_a.shape[-1] != 3 \
                or frames_a.dtype != np.uint8 or frames_c.dtype != np.uint8:
            raise ValueError(f"expected two uint8 (N, H, W, 3) RGB arrays of one shape, got "
                             f"{frames_a.dtype} {frames_a.shape} and {frames_c.dtype} {frames_c.shape}")
        n, h, w, _ = frames_a.shape
        # upstream's InputPadder: replicate padding to a multiple of 16, the odd pixel at the bottom/right
        ph, pw = -h % DIVISOR, -w % DIVISOR
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        if h + ph < MIN_PADDED_SIDE or w + pw < MIN_PADDED_SIDE:
            raise ValueError(f"AMT-S needs frames padded to at least {MIN_PADDED_SIDE}x{MIN_PADDED_SIDE} "
                             f"(> {MIN_PADDED_SIDE - DIVISOR} px a side), got {h}x{w}: its correlation pyramid "
                             "reaches 1/64 scale and upstream's output is NaN below that")
        model = _load_model(self.weight, self.device)
        out = np.empty((n, h, w, 3), np.float32)
        with torch.inference_mode():
            for s in range(0, n, self.batch):
                # NCHW-contiguous like upstream's padded tensors: channels-last strides pick other conv kernels
                imgs = [F.pad(torch.from_numpy(x[s:s + self.batch]).to(self.device).permute(0, 3, 1, 2).contiguous()
                              .float() / 255.0, pad, mode="replicate") for x in (frames_a, frames_c)]
                embt = torch.full((imgs[0].shape[0], 1, 1, 1), 0.5, device=self.device)
                pred = model(imgs[0], imgs[1], embt)[..., pad[2]:pad[2] + h, pad[0]:pad[0] + w]
                out[s:s + self.batch] = (pred * 255.0).permute(0, 2, 3, 1).cpu().numpy()
        return out


register_interpolation_backend("amt-s", AMTInterpolator)
