"""camera_motion (VBench-I2V): does the camera move the way the prompt asks?

Upstream (``vbench2_beta_i2v/camera_motion.py``, ``CameraPredict``) tracks CoTracker2's
10x10 grid on frame 0 through all frames and reads four edge midpoints of the grid:
top = row 0, down = row 9, left = column 0, right = column 9, each at index 5 of the
other axis (``get_edge_point`` with one point: ``ceil(5 - 0.5) .. ceil(5 + 0.5)``). Each
point's displacement from the first to the last frame (positions truncated to integers
first, as upstream's ``.long()``) becomes a direction set: "right"/"left" when dx > s or
dx < -s, "down"/"up" when dy > s or dy < -s, else "static", with s = 0.005 * min(H, W)
(``transform_class``). Pairs of direction sets name camera motions: for top/down and
for left/right, every combination in the product is looked up (``classify_top_down``,
``classify_left_right``); content moving left means the camera pans right, content
moving down means it tilts up, top up + bottom down (or left left + right right) is a
zoom in. The union of both look-ups is the prediction, with "static" dropped when
anything else is predicted and then "None" (no combination matched) dropped likewise
(``camera_classify``). A video scores 1 when its target label is among the predicted
ones, else 0; the aggregate is the mean (``camera_motion``), with per-label means in the
aggregate's extras (upstream's ``diff_type_results``).

The target label: for a tiny-world video, the clip's pan (``ClipSpec.pan``: a camera
panning left slides the texture right, see ``harness.data.world.pan_velocity``; left ->
pan_left, right -> pan_right, up -> tilt_up, down -> tilt_down, no pan -> static) when its
caption states the camera motion (``caption_detail="full"``); else a ``camera`` field of
the condition; else VBench's phrases ("camera pans left", ..., "camera static", first
match in upstream's order) in the caption and then in the video id (upstream reads them
from the file name, which is the id of a video of ``harness eval --videos``). A video
with none is excluded (value None) with the reason in its record.

The tracker is an option: CoTracker2 upstream; ``flow_chain`` (chained weights-free
optical flow) by default so the metric runs without weights on the tiny world. The
tracker's identity is part of the metric's, so a substitute is never read as CoTracker.
A tracker with a ``track_grid(frames, grid_size)`` method (the CoTracker backends:
upstream's ``predictor(video, grid_size=10)``, without the support grid that query
points get) is asked for the grid itself; any other tracks the same grid
(:func:`cotracker_grid`) given as query points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness.data.world import WorldCondition
from harness.scorers.backends.tracking import Tracker, get_tracker, list_trackers
from metrics.base import MetricSpec, PerVideoMetric, VideoSample
from metrics.registry import register

CAMERA_LABELS = ("pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "static")
# VBench's get_type: the first phrase (in this order) found in the file name gives the label.
PROMPT_PHRASES: dict[str, str] = {
    "camera pans left": "pan_left",
    "camera pans right": "pan_right",
    "camera tilts up": "tilt_up",
    "camera tilts down": "tilt_down",
    "camera zooms in": "zoom_in",
    "camera zooms out": "zoom_out",
    "camera static": "static",
}
# The tiny world's pan direction is the camera's: panning left slides the content right.
WORLD_PAN_LABELS: dict[str | None, str] = {
    None: "static",
    "left": "pan_left",
    "right": "pan_right",
    "up": "tilt_up",
    "down": "tilt_down",
}

GRID_SIZE = 10  # CoTracker's grid_size in VBench
EDGE_POINTS = 1  # VBench's number_points per edge
THRESHOLD_FACTOR = 0.005  # of min(H, W): the displacement an edge point must exceed
COTRACKER_RESOLUTION = (384, 512)  # (H, W) CoTracker2 lays its grid out at, then rescales

# Displacement-direction pairs -> camera motion (content moves opposite to the camera).
_TOP_DOWN = {
    "left_left": "pan_right",
    "right_right": "pan_left",
    "down_down": "tilt_up",
    "up_up": "tilt_down",
    "up_down": "zoom_in",
    "down_up": "zoom_out",
    "static_static": "static",
}
_LEFT_RIGHT = {
    "left_left": "pan_right",
    "right_right": "pan_left",
    "down_down": "tilt_up",
    "up_up": "tilt_down",
    "left_right": "zoom_in",
    "right_left": "zoom_out",
    "static_static": "static",
}
NO_MATCH = "None"  # upstream's label when no direction pair is in the table


def cotracker_grid(height: int, width: int, size: int = GRID_SIZE) -> np.ndarray:
    """(size*size, 2) (x, y) query points of CoTracker's ``grid_size`` grid on a (height, width) video.

    CoTracker (``get_points_on_a_grid``) spaces the points evenly over its 384x512 model
    resolution leaving a margin of 512/64 px on every side, row-major (y outer, x inner),
    and maps tracks back to the video with (W-1)/511 and (H-1)/383 (corner-aligned pixels)."""
    if size < 2:
        raise ValueError(f"grid size must be >= 2, got {size}")
    mh, mw = COTRACKER_RESOLUTION
    margin = mw / 64
    ys = np.linspace(margin, mh - margin, size) * (height - 1) / (mh - 1)
    xs = np.linspace(margin, mw - margin, size) * (width - 1) / (mw - 1)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([gx, gy], axis=-1).reshape(-1, 2).astype(np.float32)


def edge_points(size: int = GRID_SIZE, number: int = EDGE_POINTS) -> dict[str, list[tuple[int, int]]]:
    """(row, column) grid cells VBench reads on each edge: the middle ``number`` cells of row 0
    (top), row size-1 (down), column 0 (left) and column size-1 (right)."""
    middle, half = size // 2, number / 2.0
    span = range(math.ceil(middle - half), math.ceil(middle + half))
    return {
        "top": [(0, i) for i in span],
        "down": [(size - 1, i) for i in span],
        "left": [(i, 0) for i in span],
        "right": [(i, size - 1) for i in span],
    }


def directions(vector: Sequence[float], min_side: int, factor: float = THRESHOLD_FACTOR) -> list[str]:
    """VBench's ``transform_class``: x then y direction of a displacement, or ``["static"]``."""
    scale = min_side * factor
    dx, dy = vector
    out = []
    if dx > scale:
        out.append("right")
    elif dx < -scale:
        out.append("left")
    if dy > scale:
        out.append("down")
    elif dy < -scale:
        out.append("up")
    return out or ["static"]


def _pair_labels(first: list[str], second: list[str], table: dict[str, str]) -> list[str]:
    found = [table[f"{a}_{b}"] for a in first for b in second if f"{a}_{b}" in table]
    return found or [NO_MATCH]


def classify(edge_dirs: Mapping[str, list[str]]) -> list[str]:
    """Camera labels from the four edges' direction sets (VBench's ``camera_classify``), sorted."""
    found = set(_pair_labels(edge_dirs["top"], edge_dirs["down"], _TOP_DOWN))
    found |= set(_pair_labels(edge_dirs["left"], edge_dirs["right"], _LEFT_RIGHT))
    if "static" in found and len(found) > 1:
        found.discard("static")
    if NO_MATCH in found and len(found) > 1:
        found.discard(NO_MATCH)
    return sorted(found)


def predict_camera_motion(xy: np.ndarray, height: int, width: int, size: int = GRID_SIZE) -> dict[str, Any]:
    """Camera labels from tracks ``xy`` (T, size*size, 2) of :func:`cotracker_grid`, first vs last frame."""
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 3 or xy.shape[1:] != (size * size, 2) or xy.shape[0] < 1:
        raise ValueError(f"expected tracks of shape (T, {size * size}, 2), got {xy.shape}")
    # Upstream truncates the predicted positions to integers (``.long()``) before differencing.
    first = np.trunc(xy[0]).reshape(size, size, 2)
    last = np.trunc(xy[-1]).reshape(size, size, 2)
    vectors: dict[str, list[float]] = {}
    dirs: dict[str, list[str]] = {}
    for edge, cells in edge_points(size).items():
        v = np.mean([last[r, c] - first[r, c] for r, c in cells], axis=0)
        vectors[edge] = [float(v[0]), float(v[1])]
        dirs[edge] = directions(v, min(height, width))
    return {
        "predicted": classify(dirs),
        "edge_vectors": vectors,
        "edge_directions": dirs,
        "threshold": min(height, width) * THRESHOLD_FACTOR,
    }


def _phrase_label(text: str) -> str | None:
    text = text.lower()
    for phrase, label in PROMPT_PHRASES.items():
        if phrase in text:
            return label
    return None


def camera_target(sample: VideoSample) -> tuple[str | None, str]:
    """(label, where it came from) or (None, why there is none)."""
    cond = sample.condition
    if isinstance(cond, WorldCondition):
        if cond.spec.caption_detail != "full":
            return None, (
                f"tiny-world caption (caption_detail={cond.spec.caption_detail!r}) does not state the camera motion"
            )
        return WORLD_PAN_LABELS[cond.spec.pan], "world:pan"
    camera = cond.get("camera") if isinstance(cond, Mapping) else getattr(cond, "camera", None)
    if camera is not None:
        if camera not in CAMERA_LABELS:
            raise ValueError(f"{sample.video_id}: condition camera={camera!r} is not one of {CAMERA_LABELS}")
        return str(camera), "condition:camera"
    for source, text in (("caption", sample.caption), ("video_id", sample.video_id)):
        label = _phrase_label(text or "")
        if label is not None:
            return label, source
    return None, (
        "no camera label: neither the condition, the caption nor the video id names one of "
        + ", ".join(repr(p) for p in PROMPT_PHRASES)
    )


def resolve_tracker(tracker: str | Tracker, options: dict[str, Any] | None = None) -> Tracker:
    if isinstance(tracker, Tracker):
        if options:
            raise ValueError("tracker_options only apply when the tracker is given by name")
        return tracker
    if tracker not in list_trackers():
        import harness.scorers.backends.real  # noqa: F401  (trackers with learned weights register on import)
    return get_tracker(tracker, **(options or {}))


@register(
    MetricSpec(
        name="camera_motion",
        version="1",
        higher_is_better=True,
        kind="per-video",
        aggregation="mean",
        vbench_range=(0.0, 1.0),
        inputs=("frames", "caption", "condition"),
        weights=(),
        description="VBench-I2V camera motion: 1 if the camera label read from the tracked 10x10 grid's edge "
        "midpoints (first vs last frame) matches the prompt's, mean over labelled videos",
        departures="the tracker is an option recorded in the identity: flow_chain (chained weights-free optical "
        "flow, drifts where CoTracker2 does not) by default, CoTracker2 upstream; a tracker without "
        "CoTracker's track_grid gets the same grid as query points; tiny-world labels come from the "
        "clip's pan; camera phrases are matched case-insensitively in the caption, then the video id "
        "(upstream: the file name); unlabelled videos are excluded (upstream raises)",
        group="vbench-i2v",
    )
)
class CameraMotion(PerVideoMetric):
    # A folder of videos has no condition, but its labels come from the file names.
    needs_condition = False

    def __init__(self, tracker: str | Tracker = "flow_chain", tracker_options: dict[str, Any] | None = None) -> None:
        self.tracker = resolve_tracker(tracker, tracker_options)
        super().__init__()

    def identity_options(self) -> dict[str, object]:
        return {"tracker": self.tracker.identity}

    def reset(self) -> None:
        super().reset()
        self._labels: list[str | None] = []

    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        label, source = camera_target(sample)
        if label is None:
            return None, 1.0, {"label": None, "skipped": source}
        t, h, w = sample.frames.shape[:3]
        if t < 2:
            raise ValueError(f"{sample.video_id}: camera_motion needs at least 2 frames, got {t}")
        # A tracker with upstream's grid call (CoTracker's ``track_grid``: no support grid) gets it;
        # any other tracks the same grid as query points.
        track_grid = getattr(self.tracker, "track_grid", None)
        if callable(track_grid):
            tracks, grid_call = track_grid(list(sample.frames), GRID_SIZE), "track_grid"
        else:
            tracks, grid_call = self.tracker.track(list(sample.frames), cotracker_grid(h, w)), "queries"
        pred = predict_camera_motion(tracks.xy, h, w)
        visible_last = np.asarray(tracks.visible)[-1] > 0.5
        extras = {
            "label": label,
            "label_source": source,
            "grid_call": grid_call,
            **pred,
            "edge_visible_last": {
                edge: all(bool(visible_last[r * GRID_SIZE + c]) for r, c in cells)
                for edge, cells in edge_points().items()
            },
        }
        return float(label in pred["predicted"]), 1.0, extras

    def _record(self, sample: VideoSample, value: float | None, weight: float,
                extras: dict[str, Any]) -> dict[str, Any]:
        # Every path records through here (update and the evaluator's update_many alike), so the labels stay
        # aligned with the values.
        self._labels.append(extras["label"])
        return super()._record(sample, value, weight, extras)

    @property
    def compute_extras(self) -> dict[str, Any]:
        extras = super().compute_extras
        per_label: dict[str, list[float]] = {}
        for label, value in zip(self._labels, self._values, strict=True):
            if label is not None and value is not None:
                per_label.setdefault(label, []).append(value)
        extras["n_unlabelled"] = extras["n_excluded"]
        extras["per_label"] = {k: math.fsum(v) / len(v) for k, v in sorted(per_label.items())}
        extras["n_per_label"] = {k: len(v) for k, v in sorted(per_label.items())}
        return extras

    def state(self) -> dict[str, Any]:
        return {**super().state(), "labels": list(self._labels)}

    def merge(self, states: list[dict[str, Any]]) -> None:
        super().merge(states)
        for st in states:
            self._labels.extend(st["labels"])
