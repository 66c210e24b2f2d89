"""SHIFT's pixel-motion features (paper 000, Sec. 4.1): what its two reward discriminators read.

* IMR: the transport residual of Eq. 6, delta = dI/dt + u . grad I, between consecutive
  frames. I is the BT.601 luma in [0, 1]; grad I is the Sobel gradient (normalised to a
  derivative, averaged over the two frames so that a translation cancels to second order);
  dI/dt is the forward difference; u is the flow of a flow backend. The residual is stacked
  with the flow's confidence map: (T-1, 2, H, W).
* LMR: M random query points on the first frame are tracked (a tracker backend); per point
  and step the descriptor is [drift (2), visibility, confidence, a 3x3 correlation map]:
  drift tau[t] - tau[t-1] in units of 1/32 of the shorter side, and the colour affinity
  exp(-|c - c'|^2 / 0.02) between the point's colour at t-1 and the 3x3 neighbourhood of its
  position at t (the correlation with its temporal neighbour). Flattened per point with its
  normalised query position: (M, (T-1) * 13 + 2).

Both are computed with torch/OpenCV operators on decoded frames and never back-propagated
into the generator (SHIFT uses the discriminators' outputs only as scalar rewards).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.scorers.backends.flow import FlowBackend, sample_points
from harness.scorers.backends.tracking import FlowChainTracker, FlowFields, Tracker

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0  # d/dx per pixel
LMR_STEP_DIM = 13  # drift 2, visibility 1, confidence 1, correlation 9
CORR_OFFSETS = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def luma(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (T, H, W) BT.601 luma in [0, 1]."""
    rgb = torch.from_numpy(np.asarray(frames, dtype=np.float32) / 255.0)
    return rgb @ torch.tensor([0.299, 0.587, 0.114])


def sobel(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) -> (dI/dx, dI/dy), replicate-padded Sobel normalised to a per-pixel derivative."""
    x = F.pad(images[:, None], (1, 1, 1, 1), mode="replicate")
    kernels = torch.stack([SOBEL_X, SOBEL_X.T])[:, None].to(images)
    g = F.conv2d(x, kernels)
    return g[:, 0], g[:, 1]


def transport_residual(intensity: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Eq. 6 between consecutive frames: (T, H, W) intensity and (T-1, H, W, 2) flow (dx, dy) in
    pixels per frame -> (T-1, H, W) residual dI/dt + u dI/dx + v dI/dy."""
    if flow.shape[0] != intensity.shape[0] - 1 or flow.shape[1:3] != intensity.shape[1:]:
        raise ValueError(f"flow {tuple(flow.shape)} does not match intensity {tuple(intensity.shape)}: "
                         "expected (T-1, H, W, 2)")
    gx, gy = sobel(intensity)
    gx, gy = (gx[1:] + gx[:-1]) / 2, (gy[1:] + gy[:-1]) / 2
    dt = intensity[1:] - intensity[:-1]
    return dt + flow[..., 0] * gx + flow[..., 1] * gy


def imr_features(frames: np.ndarray, fields: FlowFields) -> torch.Tensor:
    """(T-1, 2, H, W): the transport residual and the flow confidence."""
    delta = transport_residual(luma(frames), torch.from_numpy(fields.forward))
    return torch.stack([delta, torch.from_numpy(fields.confidence)], dim=1).float()


def random_queries(height: int, width: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 2) (x, y) uniformly at random over the first frame (the paper's random sampling)."""
    return np.stack([rng.uniform(0, width - 1, count), rng.uniform(0, height - 1, count)], 1).astype(np.float32)


def lmr_features(frames: np.ndarray, tracker: Tracker, queries: np.ndarray,
                 fields: FlowFields | None = None) -> torch.Tensor:
    """(M, (T-1) * 13 + 2) per-point trajectory descriptors (see the module docstring)."""
    t_len, h, w = frames.shape[:3]
    tracks = tracker.track(list(frames), queries, fields)
    rgb = np.asarray(frames, dtype=np.float32) / 255.0
    scale = 32.0 / min(h, w)
    steps = []
    for t in range(1, t_len):
        drift = (tracks.xy[t] - tracks.xy[t - 1]) * scale
        before = sample_points(rgb[t - 1], tracks.xy[t - 1])  # (M, 3)
        corr = [np.exp(-((sample_points(rgb[t], tracks.xy[t] + np.float32(o)) - before) ** 2).sum(-1) / 0.02)
                for o in CORR_OFFSETS]
        steps.append(np.concatenate([drift, tracks.visible[t, :, None], tracks.confidence[t, :, None],
                                     np.stack(corr, 1)], 1))
    desc = np.stack(steps, 1).reshape(len(queries), -1)  # (M, (T-1) * 13)
    where = queries / np.array([max(w - 1, 1), max(h - 1, 1)], np.float32) * 2 - 1
    return torch.from_numpy(np.concatenate([desc, where], 1)).float()


def flow_fields(frames: np.ndarray, flow: FlowBackend | Tracker) -> FlowFields:
    """The consecutive flows both features share (one flow pass per video)."""
    if isinstance(flow, FlowChainTracker):
        return flow.fields(list(frames))
    from harness.scorers.backends.flow import consecutive_flows

    assert isinstance(flow, FlowBackend)
    fw, bw, conf = consecutive_flows(flow, list(frames))
    return FlowFields(flow.identity, fw, bw, conf)


def lmr_input_dim(num_frames: int) -> int:
    return (num_frames - 1) * LMR_STEP_DIM + 2


def batch_lmr(frames: Sequence[np.ndarray], tracker: Tracker, queries: int, rngs: Sequence[np.random.Generator],
              fields: Sequence[FlowFields | None]) -> torch.Tensor:
    """(B, M, D) for a batch of videos, each with its own random queries."""
    out = []
    for f, rng, fl in zip(frames, rngs, fields, strict=True):
        out.append(lmr_features(f, tracker, random_queries(f.shape[1], f.shape[2], queries, rng), fl))
    return torch.stack(out)
