"""What every metric shares: the sample it reads, its metadata and the update/compute protocol.

The protocol follows torchmetrics: ``update`` scores one video (returning the
per-video record that the store keeps) and accumulates state; ``compute`` returns
the aggregate. ``state``/``merge`` let aggregates computed on several processes be
combined into exactly the single-process result: per-video metrics keep one value
per video and sum them with ``math.fsum`` (correctly rounded, so the result does
not depend on how videos were split or ordered).
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from metrics.groups import BY_KEY, OTHER

MetricKind = Literal["per-video", "set", "training-probe"]
KINDS: tuple[str, ...] = ("per-video", "set", "training-probe")
AGGREGATIONS: tuple[str, ...] = ("mean", "frame_weighted_mean", "fraction", "frechet", "series")


@dataclass
class VideoSample:
    """One generated video and what it was generated from."""

    video_id: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float
    first_frame: np.ndarray | None = None  # (H, W, 3) uint8: the conditioning image
    caption: str = ""
    condition: object | None = field(default=None, repr=False)  # opaque, e.g. the tiny world's ClipSpec

    def __post_init__(self) -> None:
        f = self.frames = np.asarray(self.frames)
        if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise ValueError(f"{self.video_id}: frames must be uint8 (T, H, W, 3), got {f.dtype} {f.shape}")
        if not (self.fps > 0):
            raise ValueError(f"{self.video_id}: fps must be positive, got {self.fps}")
        if self.first_frame is not None:
            ff = self.first_frame = np.asarray(self.first_frame)
            if ff.dtype != np.uint8 or ff.ndim != 3 or ff.shape[-1] != 3:
                raise ValueError(f"{self.video_id}: first_frame must be uint8 (H, W, 3), "
                                 f"got {ff.dtype} {ff.shape}")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class MetricSpec:
    """Metadata that travels with every stored number."""

    name: str
    version: str
    higher_is_better: bool
    kind: MetricKind
    aggregation: str
    vbench_range: tuple[float, float] | None  # (min, max) used to normalise in VBench roll-ups
    inputs: tuple[str, ...]  # VideoSample fields read
    weights: tuple[str, ...]  # weight files needed; empty for weights-free metrics
    description: str
    departures: str = ""  # how this implementation departs from the upstream reference
    # The judge whose verdict the metric reports, by the name methods declare their training signals by
    # (TrainerConfig.training_signals): a method trained on it shares a source with the metric, and
    # every table marks that cell (metrics/judges.py). None: a measurement no method trains on.
    judge: str | None = None
    # evaluation: a yardstick; training-judge: a training signal scored on every checkpoint, so that its
    # gain can be read against the held-out judges' (reported apart from the evaluation metrics).
    role: Literal["evaluation", "training-judge"] = "evaluation"
    # The column group of the paper-layout tables (metrics/groups.py): VBench-I2V quality, I2V, FVD in the
    # main table; motion, hacking diagnostics, rewards, probes in the second one.
    group: str = OTHER
    # When the aggregate can be undefined (NaN) and why: the note under a table whose column has no value.
    undefined: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r} not in {KINDS}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"{self.name}: aggregation {self.aggregation!r} not in {AGGREGATIONS}")
        if self.role not in ("evaluation", "training-judge"):
            raise ValueError(f"{self.name}: role {self.role!r} is not evaluation or training-judge")
        if self.group not in BY_KEY:
            raise ValueError(f"{self.name}: group {self.group!r} is not one of {sorted(BY_KEY)} (metrics/groups.py)")
        unknown = set(self.inputs) - set(VideoSample.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{self.name}: inputs {sorted(unknown)} are not VideoSample fields")


def format_identity(name: str, options: dict[str, object]) -> str:
    """``name[k1=v1,k2=v2]`` with keys sorted; bare ``name`` without options."""
    if not options:
        return name
    return f"{name}[{','.join(f'{k}={_fmt(v)}' for k, v in sorted(options.items()))}]"


def _fmt(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Metric(ABC):
    """update(sample) -> record; compute() -> aggregate; state()/merge() across processes."""

    spec: ClassVar[MetricSpec]  # set by metrics.registry.register

    def identity_options(self) -> dict[str, object]:
        """Options that change the numbers (backends, statistics); part of the identity."""
        return {}

    @property
    def identity(self) -> str:
        """Key under which results are stored, e.g. ``dynamic_degree[flow=dis]``."""
        return format_identity(self.spec.name, self.identity_options())

    @abstractmethod
    def update(self, sample: VideoSample) -> dict[str, Any]: ...

    @abstractmethod
    def compute(self) -> float: ...

    @property
    def compute_extras(self) -> dict[str, Any]:
        """Facts about the last aggregate (counts, exclusions) stored with it."""
        return {}

    @abstractmethod
    def state(self) -> dict[str, Any]: ...

    @abstractmethod
    def merge(self, states: list[dict[str, Any]]) -> None: ...

    @abstractmethod
    def reset(self) -> None: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.identity}>"


class PerVideoMetric(Metric):
    """A metric that scores each video and aggregates the per-video values.

    Subclasses implement ``score``; a value of ``None`` excludes the video from the
    aggregate (e.g. temporal flickering on a non-static video) while still returning
    its record. Aggregations: ``mean``/``fraction`` (mean of values) and
    ``frame_weighted_mean`` (sum of value*weight over sum of weights).
    """

    def __init__(self) -> None:
        self.reset()

    @abstractmethod
    def score(self, sample: VideoSample) -> tuple[float | None, float, dict[str, Any]]:
        """(value or None to exclude, weight, extras) for one video."""

    def reset(self) -> None:
        self._ids: list[str] = []
        self._values: list[float | None] = []
        self._weights: list[float] = []

    def score_many(self, samples: list[VideoSample]) -> list[tuple[float | None, float, dict[str, Any]]]:
        """``score`` of each sample; a metric whose model runs faster on a batch overrides it."""
        return [self.score(s) for s in samples]

    def update(self, sample: VideoSample) -> dict[str, Any]:
        return self.update_many([sample])[0]

    def update_many(self, samples: list[VideoSample]) -> list[dict[str, Any]]:
        """``update`` of each sample in order, scored together (``score_many``)."""
        ids = [s.video_id for s in samples]
        again = sorted(set(ids) & set(self._ids)) or sorted({i for i in ids if ids.count(i) > 1})
        if again:
            raise ValueError(f"{self.identity}: video {again[0]!r} was already scored")
        scored = self.score_many(list(samples))
        if len(scored) != len(samples):
            raise RuntimeError(f"{self.identity}: score_many returned {len(scored)} results for {len(samples)} videos")
        return [self._record(s, *r) for s, r in zip(samples, scored, strict=True)]

    def _record(self, sample: VideoSample, value: float | None, weight: float,
                extras: dict[str, Any]) -> dict[str, Any]:
        value = None if value is None or math.isnan(value) else float(value)
        self._ids.append(sample.video_id)
        self._values.append(value)
        self._weights.append(float(weight))
        return {"video_id": sample.video_id, "value": value, "weight": float(weight), "extras": extras}

    def _kept(self) -> tuple[list[float], list[float]]:
        pairs = [(v, w) for v, w in zip(self._values, self._weights, strict=True) if v is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def compute(self) -> float:
        values, weights = self._kept()
        if not values:
            warnings.warn(f"{self.identity}: no video contributes to the aggregate "
                          f"({len(self._ids)} scored, all excluded); returning NaN", stacklevel=2)
            return float("nan")
        if self.spec.aggregation == "frame_weighted_mean":
            return math.fsum(v * w for v, w in zip(values, weights, strict=True)) / math.fsum(weights)
        return math.fsum(values) / len(values)

    @property
    def compute_extras(self) -> dict[str, Any]:
        n_kept = sum(v is not None for v in self._values)
        return {"n_videos": len(self._ids), "n_included": n_kept, "n_excluded": len(self._ids) - n_kept}

    def state(self) -> dict[str, Any]:
        return {"identity": self.identity, "video_ids": list(self._ids), "values": list(self._values),
                "weights": list(self._weights)}

    def merge(self, states: list[dict[str, Any]]) -> None:
        """Add other processes' states to this one (do not pass this instance's own state)."""
        seen = set(self._ids)
        for st in states:
            if st["identity"] != self.identity:
                raise ValueError(f"cannot merge state of {st['identity']} into {self.identity}")
            dup = seen.intersection(st["video_ids"])
            if dup:
                raise ValueError(f"{self.identity}: videos scored twice across states: {sorted(dup)[:5]}")
            seen.update(st["video_ids"])
            self._ids.extend(st["video_ids"])
            self._values.extend(None if v is None else float(v) for v in st["values"])
            self._weights.extend(float(w) for w in st["weights"])
