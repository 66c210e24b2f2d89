"""The metric registry: VBench-I2V dimensions, motion score, and (later) FVD and training probes.

Importing the package registers the built-in metrics. Use ``get_metric(name, **options)``
and the update/compute protocol of ``metrics.base.Metric``; roll-ups are in
``metrics.rollups`` and the Frechet distance in ``metrics.frechet``. The tiny
world's oracle judges are wrapped as ``distortion_rate`` and ``motion_adherence``.
"""

from metrics import (  # noqa: F401  (registration side effects)
    camera_motion,
    consistency,
    dynamic_degree,
    fvd,
    motion_score,
    motion_smoothness,
    quality,
    rewards,
    temporal_flickering,
    world_oracle,
)
from metrics.base import Metric, MetricSpec, PerVideoMetric, VideoSample
from metrics.registry import UnknownOptionError, get_metric, list_metrics, metric_options, register

__all__ = [
    "Metric", "MetricSpec", "PerVideoMetric", "UnknownOptionError", "VideoSample",
    "get_metric", "list_metrics", "metric_options", "register",
]
