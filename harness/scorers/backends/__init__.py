"""Swappable estimators the metrics and motion rewards are built on (optical flow, frame
interpolation, point tracking)."""

from harness.scorers.backends.flow import (
    DISFlow,
    FarnebackFlow,
    FlowBackend,
    get_flow_backend,
    list_flow_backends,
    register_flow_backend,
)
from harness.scorers.backends.interpolation import (
    FlowInterpolator,
    InterpolationBackend,
    get_interpolation_backend,
    list_interpolation_backends,
)
from harness.scorers.backends.tracking import FlowChainTracker, Tracker, get_tracker, list_trackers, register_tracker

__all__ = [
    "DISFlow", "FarnebackFlow", "FlowBackend", "FlowInterpolator", "InterpolationBackend",
    "get_flow_backend", "get_interpolation_backend", "list_flow_backends", "list_interpolation_backends",
    "register_flow_backend", "FlowChainTracker", "Tracker", "get_tracker", "list_trackers", "register_tracker",
]
