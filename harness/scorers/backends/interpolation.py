"""Frame-interpolation backends for motion_smoothness.

VBench interpolates with AMT-S (learned weights). ``FlowInterpolator`` is the
weights-free substitute: it estimates flow both ways between frames ``a`` and
``c`` with a flow backend, approximates the flows from the middle frame back to
each end (Super SloMo's linear-motion combination of the two directions), warps
``a`` and ``c`` halfway with ``cv2.remap`` and averages them. It has no
occlusion reasoning, so its errors on occluding motion are larger than AMT-S's:
absolute motion_smoothness values are not comparable with published VBench
numbers, only with each other under the same backend identity.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from harness.scorers.backends.flow import FlowBackend, check_frame, resolve_flow


class InterpolationBackend(ABC):
    """Predicts the frame halfway between two frames."""

    name: str

    @property
    @abstractmethod
    def identity(self) -> str: ...

    @abstractmethod
    def __call__(self, a: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Middle frame (H, W, 3) float32 in [0, 255]; the caller quantises it."""


class FlowInterpolator(InterpolationBackend):
    """Bidirectional-flow warping and blending at t = 0.5 (weights-free stand-in for AMT-S)."""

    def __init__(self, flow: str | FlowBackend = "dis", flow_options: dict[str, Any] | None = None) -> None:
        self.flow = resolve_flow(flow, flow_options)
        self.name = f"flowinterp-{self.flow.name}"

    @property
    def identity(self) -> str:
        return f"flowinterp-{self.flow.identity}"

    def __call__(self, a: np.ndarray, c: np.ndarray) -> np.ndarray:
        a, c = check_frame(a), check_frame(c)
        f_ac, f_ca = self.flow.flows([a, c], [(0, 1), (1, 0)])
        t = 0.5
        # Flow from the middle frame to each end under linear motion (Super SloMo, eq. 4).
        f_ta = -(1 - t) * t * f_ac + t * t * f_ca
        f_tc = (1 - t) * (1 - t) * f_ac - t * (1 - t) * f_ca
        h, w = a.shape[:2]
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))

        def warp(img: np.ndarray, f: np.ndarray) -> np.ndarray:
            return cv2.remap(img.astype(np.float32), gx + f[..., 0], gy + f[..., 1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)

        return ((1 - t) * warp(a, f_ta) + t * warp(c, f_tc)).astype(np.float32)


_PREFIX = "flowinterp-"
_NAMED: dict[str, Callable[..., InterpolationBackend]] = {}


def register_interpolation_backend(name: str, factory: Callable[..., InterpolationBackend]) -> None:
    """Make ``get_interpolation_backend(name, **options)`` return ``factory(**options)``."""
    _NAMED[name] = factory


def _import_real() -> None:
    import harness.scorers.backends.real  # noqa: F401  (backends with learned weights register on import; torch is heavy)


def list_interpolation_backends() -> list[str]:
    from harness.scorers.backends.flow import list_flow_backends

    _import_real()
    return sorted(_NAMED) + [_PREFIX + f for f in list_flow_backends()]


def get_interpolation_backend(name: str, **options: Any) -> InterpolationBackend:
    """A named backend (e.g. ``amt-s``) or ``flowinterp-<flow>`` (e.g. ``flowinterp-dis``, options go to the
    flow backend)."""
    from harness.scorers.backends.flow import list_flow_backends

    for attempt in range(2):
        if name in _NAMED:
            return _NAMED[name](**options)
        if name.startswith(_PREFIX) and name[len(_PREFIX):] in list_flow_backends():
            return FlowInterpolator(flow=name[len(_PREFIX):], flow_options=options or None)
        if attempt == 0:
            _import_real()
    raise KeyError(f"unknown interpolation backend {name!r}; registered: {', '.join(list_interpolation_backends())}")


def resolve_interpolation(interp: str | InterpolationBackend,
                          options: dict[str, Any] | None = None) -> InterpolationBackend:
    if isinstance(interp, InterpolationBackend):
        if options:
            raise ValueError("interp_options only apply when the backend is given by name")
        return interp
    return get_interpolation_backend(interp, **(options or {}))
