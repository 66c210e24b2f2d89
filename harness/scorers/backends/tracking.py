"""Point trackers, selectable by name, for SHIFT's long-term motion reward (LMR).

A tracker follows query points given on the first frame through a video and returns
their positions, a visibility flag and a confidence per frame, as CoTracker3 does.
``flow_chain`` is the weights-free substitute: it chains consecutive optical flows
(a registered flow backend) by bilinear look-up at the current position; the
confidence of a step is the forward-backward consistency of the flow there, and a point
is visible while it is inside the frame with confidence >= 0.5. It drifts on long
occlusions where CoTracker3 re-finds points; its identity names it, so a reward built
on it is never mistaken for one built on CoTracker3 (added with local weights beside it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from harness.scorers.backends.flow import check_frame, consecutive_flows, resolve_flow, sample_points


@dataclass
class Tracks:
    xy: np.ndarray  # (T, M, 2) float32 (x, y) pixel positions
    visible: np.ndarray  # (T, M) float32 in {0, 1}
    confidence: np.ndarray  # (T, M) float32 in [0, 1]


@dataclass
class FlowFields:
    """Consecutive flows of one video, shareable between the IMR features and a flow tracker."""

    flow_identity: str
    forward: np.ndarray  # (T-1, H, W, 2)
    backward: np.ndarray  # (T-1, H, W, 2)
    confidence: np.ndarray  # (T-1, H, W)


class Tracker(ABC):
    name: ClassVar[str]

    @property
    @abstractmethod
    def identity(self) -> str: ...

    @abstractmethod
    def track(self, frames: Sequence[np.ndarray], queries: np.ndarray, fields: FlowFields | None = None) -> Tracks:
        """Track ``queries`` (M, 2) (x, y) on frame 0 through ``frames``."""


class FlowChainTracker(Tracker):
    name = "flow_chain"

    def __init__(self, flow: str = "dis", flow_options: dict[str, Any] | None = None, min_confidence: float = 0.5):
        self.flow = resolve_flow(flow, flow_options)
        self.min_confidence = min_confidence

    @property
    def identity(self) -> str:
        return f"{self.name}(flow={self.flow.identity})"

    def fields(self, frames: Sequence[np.ndarray]) -> FlowFields:
        fw, bw, conf = consecutive_flows(self.flow, frames)
        return FlowFields(self.flow.identity, fw, bw, conf)

    def track(self, frames: Sequence[np.ndarray], queries: np.ndarray, fields: FlowFields | None = None) -> Tracks:
        frames = [check_frame(f) for f in frames]
        h, w = frames[0].shape[:2]
        if fields is None or fields.flow_identity != self.flow.identity:
            fields = self.fields(frames)
        t_len, m = len(frames), len(queries)
        xy = np.zeros((t_len, m, 2), np.float32)
        conf = np.ones((t_len, m), np.float32)
        xy[0] = queries
        for t in range(t_len - 1):
            xy[t + 1] = xy[t] + sample_points(fields.forward[t], xy[t])
            conf[t + 1] = sample_points(fields.confidence[t], xy[t])
        inside = (xy[..., 0] >= 0) & (xy[..., 0] <= w - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= h - 1)
        visible = (inside & (conf >= self.min_confidence)).astype(np.float32)
        return Tracks(xy, visible, conf)


_TRACKERS: dict[str, type[Tracker]] = {FlowChainTracker.name: FlowChainTracker}


def register_tracker(cls: type[Tracker]) -> type[Tracker]:
    _TRACKERS[cls.name] = cls
    return cls


def list_trackers() -> list[str]:
    return sorted(_TRACKERS)


def get_tracker(name: str, **options: Any) -> Tracker:
    """A tracker by name (``flow_chain``, ``cotracker3``, ``cotracker2``); unknown names list the registered ones.

    The weight-loading trackers register when ``harness.scorers.backends.real`` is imported, which an
    unknown name triggers here; constructing one needs no weight file (tracking does).
    """
    if name not in _TRACKERS:
        import harness.scorers.backends.real  # noqa: F401  (the weight-loading trackers register on import)
    if name not in _TRACKERS:
        raise KeyError(f"unknown tracker {name!r}; registered: {', '.join(list_trackers())}")
    return _TRACKERS[name](**options)
