"""Weights-free optical-flow backends (OpenCV DIS and Farneback), selectable by name.

VBench uses RAFT (things checkpoint, 20 iterations) for dynamic_degree and its
static filter; these backends are the weights-free substitutes, registered under
names so that RAFT/SEA-RAFT can be added beside them. Every backend returns the
flow from frame ``a`` to frame ``b`` as (H, W, 2) float32 (dx, dy) in pixels of
the *input* resolution, estimated on grayscale.

Tiny frames (the 16 px default preset) give the estimators too few pixels per
patch/window, so flow is computed on bicubically upscaled frames and the result
is block-averaged back and divided by the factor. ``upscale="auto"`` picks the
smallest integer factor bringing the shorter side to ``AUTO_MIN_SIDE`` (capped
at 8); real 480p videos are never upscaled. A backend's identity names every
option that differs from its defaults, e.g. ``dis`` or ``dis(preset=fast,upscale=1)``;
the defaults themselves are pinned by the backend's ``version``.

Inside ``shared_flows()`` (opened by the Evaluator for one checkpoint) a flow is computed
once per (backend identity, pair of frames): motion score, dynamic degree, the static
filter and the motion reward models all ask for the same consecutive flows.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, ClassVar

import cv2
import numpy as np

from harness.lru import LRUCache

MAX_AUTO_UPSCALE = 8


def check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[-1] == 3)):
        raise ValueError(f"expected a uint8 (H, W, 3) RGB or (H, W) gray frame, "
                         f"got {frame.dtype} {frame.shape}")
    return frame


def auto_upscale(height: int, width: int, min_side: int) -> int:
    """Smallest integer factor bringing the shorter side to ``min_side`` (1 if it already is)."""
    return int(min(MAX_AUTO_UPSCALE, max(1, math.ceil(min_side / min(height, width)))))


class FlowBackend(ABC):
    """Dense optical flow from ``a`` to ``b``; options validated against ``defaults``."""

    name: ClassVar[str]
    version: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]
    AUTO_MIN_SIDE: ClassVar[int]
    # ``_estimate`` may run in several threads at once (stateless, GIL released): compute_flows spreads pairs
    parallel_estimates: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            allowed = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
            raise ValueError(f"flow backend {self.name!r} has no option(s) {unknown}; allowed: {allowed}")
        self.options: dict[str, Any] = {**self.defaults, **options}
        up = self.options["upscale"]
        if up != "auto" and not (isinstance(up, int) and up >= 1):
            raise ValueError(f"{self.name}: upscale must be 'auto' or an integer >= 1, got {up!r}")
        self._validate()

    def _validate(self) -> None:
        """Backend-specific option checks (none by default)."""
        return None

    @property
    def identity(self) -> str:
        changed = {k: v for k, v in self.options.items() if v != self.defaults[k]}
        if not changed:
            return self.name
        return f"{self.name}({','.join(f'{k}={v}' for k, v in sorted(changed.items()))})"

    def upscale_for(self, height: int, width: int) -> int:
        up = self.options["upscale"]
        return auto_upscale(height, width, self.AUTO_MIN_SIDE) if up == "auto" else int(up)

    @abstractmethod
    def _prepare(self, frame: np.ndarray, factor: int) -> np.ndarray:
        """Grayscale (and upscale) one frame into what ``_estimate`` takes."""

    @abstractmethod
    def _estimate(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Flow (h, w, 2) float32 between two prepared frames."""

    def _restore(self, flow: np.ndarray, factor: int, height: int, width: int) -> np.ndarray:
        if factor == 1:
            return flow.astype(np.float32, copy=False)
        # INTER_AREA with an integer factor is the mean over each factor x factor block.
        return (cv2.resize(flow, (width, height), interpolation=cv2.INTER_AREA) / factor).astype(np.float32)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.flows([a, b], [(0, 1)])[0]

    def flows(self, frames: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Flow for each (i, j) pair of ``frames``; inside ``shared_flows()`` known pairs are not recomputed."""
        return self._cached(frames, pairs, self.identity, self.compute_flows)

    def padded_flows(self, frames: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """The flow field the backend computes, before any unpadding: VBench takes its dynamic-degree and
        static-filter statistics on RAFT's padded output (``get_score(image1, flow_up)`` after
        ``padder.pad``). Backends that do not pad (the weights-free ones) return ``flows``."""
        return self.flows(frames, pairs)

    def _cached(self, frames: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]], tag: str,
                compute) -> list[np.ndarray]:
        frames = [check_frame(f) for f in frames]
        if any(f.shape[:2] != frames[0].shape[:2] for f in frames):
            raise ValueError("all frames must have the same height and width")
        cache = _ACTIVE[-1] if _ACTIVE else None
        if cache is None:
            return compute(frames, pairs)
        digests = [_digest(f) for f in frames]
        keys = [(tag, digests[i], digests[j]) for i, j in pairs]
        found = [cache.get(k) for k in keys]
        todo = [n for n, f in enumerate(found) if f is None]
        if todo:
            for n, flow in zip(todo, compute(frames, [pairs[n] for n in todo]), strict=True):
                found[n] = cache.put(keys[n], _frozen(flow))
        return found

    def compute_flows(self, frames: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Flow for each (i, j) pair of checked, same-sized ``frames``; each frame is prepared once
        and freed after its last use. Backends whose estimates may run side by side (``parallel_estimates``)
        spread the pairs over a thread pool: OpenCV releases the GIL, each pair is estimated on its own (the
        results are the same bits as one by one), and a 16-px video's pairs take about a third less time."""
        h, w = frames[0].shape[:2]
        factor = self.upscale_for(h, w)
        pool = _estimate_pool() if self.parallel_estimates and len(pairs) > 1 else None
        if pool is not None:
            prepared = {k: self._prepare(frames[k], factor) for k in sorted({k for pair in pairs for k in pair})}
            flows = pool.map(lambda pair: self._estimate(prepared[pair[0]], prepared[pair[1]]), pairs)
            return [self._restore(flow, factor, h, w) for flow in flows]
        last_use = {k: n for n, pair in enumerate(pairs) for k in pair}
        prepared: dict[int, np.ndarray] = {}
        out = []
        for n, (i, j) in enumerate(pairs):
            for k in (i, j):
                if k not in prepared:
                    prepared[k] = self._prepare(frames[k], factor)
            out.append(self._restore(self._estimate(prepared[i], prepared[j]), factor, h, w))
            for k in (i, j):
                if last_use[k] == n:
                    prepared.pop(k, None)
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.identity}>"


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
MAX_FLOW_THREADS = 8


def _estimate_pool() -> ThreadPoolExecutor | None:
    """The process's thread pool for flow estimates (one thread per core, at most ``MAX_FLOW_THREADS``), or
    None on one core. Created on first use, kept for the process's life."""
    global _POOL
    workers = min(os.cpu_count() or 1, MAX_FLOW_THREADS)
    if workers < 2:
        return None
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(workers, thread_name_prefix="flow")
    return _POOL


def _forget_pool() -> None:
    """In a forked child the parent's pool threads do not exist: start a pool of its own when needed."""
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)


def _frozen(flow: np.ndarray) -> np.ndarray:
    """Cached flows are read-only: a metric that changed one in place would change another metric's input."""
    flow = np.ascontiguousarray(flow)
    flow.flags.writeable = False
    return flow


_ACTIVE: list[LRUCache[np.ndarray]] = []


def _digest(frame: np.ndarray) -> bytes:
    h = hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=16)
    h.update(repr((frame.shape, frame.dtype.str)).encode())
    return h.digest()


@contextmanager
def shared_flows(max_bytes: int = 512 * 2**20) -> Iterator[LRUCache[np.ndarray]]:
    """Flows computed inside are computed once per (backend identity, frame pair), up to
    ``max_bytes`` of them kept (a tiny-preset checkpoint needs ~2 MB; 480p flows are
    3 MB each). Results are the same as without it: the backends are deterministic."""
    cache: LRUCache[np.ndarray] = LRUCache(max_bytes=max_bytes, size=lambda flow: flow.nbytes)
    _ACTIVE.append(cache)
    try:
        yield cache
    finally:
        _ACTIVE.remove(cache)


def _upscale(img: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return img
    return cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class DISFlow(FlowBackend):
    """OpenCV DIS (dense inverse search): fast, robust to large motion, no weights.

    Auto upscaling targets a 128 px shorter side: on the tiny world's sprites the
    end-point error at 16 px drops from 0.22 px (no upscaling) to 0.13 px.
    """

    name = "dis"
    version = "1"
    defaults: ClassVar[dict[str, Any]] = {"preset": "medium", "upscale": "auto"}
    AUTO_MIN_SIDE = 128
    parallel_estimates = True  # one DIS object per thread; an estimate keeps no state between calls

    def _validate(self) -> None:
        if self.options["preset"] not in DIS_PRESETS:
            raise ValueError(f"dis: preset must be one of {sorted(DIS_PRESETS)}, "
                             f"got {self.options['preset']!r}")
        self._local = threading.local()

    def _prepare(self, frame: np.ndarray, factor: int) -> np.ndarray:
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        return _upscale(gray, factor)  # DIS takes 8-bit input; bicubic saturates to uint8

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles leave the per-thread DIS objects behind
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _estimate(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        dis = getattr(self._local, "dis", None)
        if dis is None:  # this thread's own DIS object (one object is not safe to share across threads)
            dis = self._local.dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.options["preset"]])
        return dis.calc(a, b, None)


class FarnebackFlow(FlowBackend):
    """OpenCV Farneback polynomial-expansion flow.

    OpenCV adds 1e-3 to the determinant of each pixel's 2x2 system, which on
    smooth textures (small second derivatives, worse after upscaling) drives the
    flow towards zero: a 1 px/frame smooth texture measured 0.17 px at 64 px. The
    frames are therefore given as float intensities multiplied by ``gain`` (16),
    which makes the regulariser negligible without changing the estimate elsewhere.
    """

    name = "farneback"
    version = "1"
    defaults: ClassVar[dict[str, Any]] = {
        "pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2,
        "gain": 16.0, "upscale": "auto",
    }
    AUTO_MIN_SIDE = 64
    parallel_estimates = True  # cv2.calcOpticalFlowFarneback is a pure function

    def _validate(self) -> None:
        if self.options["poly_n"] not in (5, 7):
            raise ValueError(f"farneback: poly_n must be 5 or 7, got {self.options['poly_n']!r}")
        if not self.options["gain"] > 0:
            raise ValueError(f"farneback: gain must be positive, got {self.options['gain']!r}")

    def _prepare(self, frame: np.ndarray, factor: int) -> np.ndarray:
        img = frame.astype(np.float32)
        gray = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        return _upscale(gray * np.float32(self.options["gain"]), factor)

    def _estimate(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        o = self.options
        return cv2.calcOpticalFlowFarneback(a, b, None, o["pyr_scale"], o["levels"], o["winsize"],
                                            o["iterations"], o["poly_n"], o["poly_sigma"], 0)


_FLOW_BACKENDS: dict[str, type[FlowBackend]] = {}


def register_flow_backend(cls: type[FlowBackend]) -> type[FlowBackend]:
    """Make a backend class available to ``get_flow_backend`` under ``cls.name``."""
    _FLOW_BACKENDS[cls.name] = cls
    return cls


for _cls in (DISFlow, FarnebackFlow):
    register_flow_backend(_cls)


def list_flow_backends() -> list[str]:
    return sorted(_FLOW_BACKENDS)


def get_flow_backend(name: str, **options: Any) -> FlowBackend:
    """A flow backend by name (``dis``, ``farneback``, ``raft``); unknown names list the registered ones."""
    if name not in _FLOW_BACKENDS:
        import harness.scorers.backends.real  # noqa: F401  (the weight-loading backends register on import)
    if name not in _FLOW_BACKENDS:
        raise KeyError(f"unknown flow backend {name!r}; registered: {', '.join(list_flow_backends())}")
    return _FLOW_BACKENDS[name](**options)


def resolve_flow(flow: str | FlowBackend, options: dict[str, Any] | None = None) -> FlowBackend:
    """Accept a backend instance or a name (+ options), as metric constructors do."""
    if isinstance(flow, FlowBackend):
        if options:
            raise ValueError("flow_options only apply when the flow backend is given by name")
        return flow
    return get_flow_backend(flow, **(options or {}))


# -- consecutive-frame flow fields with a forward-backward confidence ----------------------------
def warp(field: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``field`` (H, W[, C]) sampled at x + flow(x), bilinear, edges replicated."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(np.ascontiguousarray(field, dtype=np.float32), gx + flow[..., 0], gy + flow[..., 1],
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def sample_points(field: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``field`` (H, W[, C]) at sub-pixel points ``xy`` (M, 2) as (M[, C]), bilinear, edges replicated."""
    mx = np.ascontiguousarray(xy[:, 0:1], dtype=np.float32)
    my = np.ascontiguousarray(xy[:, 1:2], dtype=np.float32)
    out = cv2.remap(np.ascontiguousarray(field, dtype=np.float32), mx, my, cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out[:, 0]


def fb_confidence(fw: np.ndarray, bw: np.ndarray, alpha: float = 0.01, beta: float = 0.5) -> np.ndarray:
    """Soft forward-backward consistency in [0, 1]: exp(-|fw + bw(x + fw)|^2 / (alpha (|fw|^2 + |bw'|^2) + beta)).
    A pixel whose backward flow does not return it to its start (occlusion, a flow error) gets
    a low confidence; the thresholds are Sundaram et al.'s occlusion test (alpha 0.01, beta 0.5 px^2)."""
    back = warp(bw, fw)
    err = ((fw + back) ** 2).sum(-1)
    scale = alpha * ((fw**2).sum(-1) + (back**2).sum(-1)) + beta
    return np.exp(-err / scale).astype(np.float32)


def consecutive_flows(backend: FlowBackend, frames: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward flows t -> t+1, backward flows t+1 -> t (each (T-1, H, W, 2)) and the forward
    flows' confidence (T-1, H, W) from forward-backward consistency, for a weights-free backend
    that gives no confidence of its own."""
    n = len(frames)
    if n < 2:
        raise ValueError(f"need at least 2 frames for flow, got {n}")
    pairs = [p for t in range(n - 1) for p in ((t, t + 1), (t + 1, t))]
    flows = backend.flows(frames, pairs)
    fw, bw = np.stack(flows[0::2]), np.stack(flows[1::2])
    conf = np.stack([fb_confidence(f, b) for f, b in zip(fw, bw, strict=True)])
    return fw, bw, conf
