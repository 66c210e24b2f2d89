"""Metrics by name: ``register`` attaches a spec to a Metric class, ``get_metric`` builds one.

A metric's options are the keyword arguments of its ``__init__``; asking for an
option it does not have fails loudly (a typo in a config must not silently fall
back to a default and store numbers under the wrong identity).

The built-in metrics are registered by ``metrics/__init__.py``, which Python runs before any
submodule (this one included) is imported, so the registry never imports them itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from metrics.base import Metric, MetricSpec

_REGISTRY: dict[str, type[Metric]] = {}


class UnknownOptionError(ValueError):
    """An option the metric does not take."""


def register(spec: MetricSpec) -> Callable[[type[Metric]], type[Metric]]:
    """Class decorator: ``@register(MetricSpec(name=...))``."""

    def wrap(cls: type[Metric]) -> type[Metric]:
        if not (isinstance(cls, type) and issubclass(cls, Metric)):
            raise TypeError(f"register({spec.name!r}) decorates Metric subclasses, got {cls!r}")
        if spec.name in _REGISTRY and _REGISTRY[spec.name] is not cls:
            raise ValueError(f"metric {spec.name!r} is already registered by {_REGISTRY[spec.name].__name__}")
        cls.spec = spec
        _REGISTRY[spec.name] = cls
        return cls

    return wrap


def metric_options(name: str) -> dict[str, Any]:
    """Allowed options of a metric and their defaults."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return {p.name: p.default for p in list(params.values())[1:]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _lookup(name: str) -> type[Metric]:
    if name not in _REGISTRY:
        from metrics.probe_specs import PROBE_SPECS

        if name in PROBE_SPECS:
            raise KeyError(f"{name!r} is a training probe: it is measured while a method trains "
                           "(preset probes.names), not on videos")
        raise KeyError(f"unknown metric {name!r}; registered: {', '.join(sorted(_REGISTRY)) or '(none)'}")
    return _REGISTRY[name]


def get_metric(name: str, **options: Any) -> Metric:
    """A fresh metric instance; unknown names or options raise with the allowed ones listed."""
    cls = _lookup(name)
    allowed = metric_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "(none)"
        raise UnknownOptionError(f"metric {cls.spec.name!r} has no option(s) {unknown}; allowed: {listed}")
    return cls(**options)


# Named sets of metrics with the backends of the upstream suite. A group's options are the
# defaults of its members; per-metric options from a preset (eval.backends) override them.
METRIC_GROUPS: dict[str, dict[str, dict[str, Any]]] = {
    # VBench-I2V with upstream models (camera_motion: CoTracker2 through `torch.hub`, as VBench-I2V).
    "vbench-i2v": {
        "subject_consistency": {"features": "dino-vitb16"},
        "background_consistency": {"features": "clip-vitb32"},
        "motion_smoothness": {"interp": "amt-s"},
        "dynamic_degree": {"flow": "raft"},
        "aesthetic_quality": {},
        "imaging_quality": {},
        "i2v_subject": {"features": "dino-vitb16-i2v"},
        "i2v_background": {"features": "dreamsim"},
        "camera_motion": {"tracker": "cotracker2"},
        # VBench-I2V scores temporal flickering on every video (vbench/temporal_flickering.py, no filter); the
        # static filter belongs to VBench's text-to-video prompt suite, whose "static" prompts it checks.
        "temporal_flickering": {"static_filter": False},
    },
}


def expand_metrics(names: list[str], backends: dict[str, dict[str, Any]] | None = None
                   ) -> list[tuple[str, dict[str, Any]]]:
    """Metric names and group names -> (metric, options), groups expanded in place, duplicates dropped."""
    backends = backends or {}
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        members = METRIC_GROUPS.get(name, {name: {}})
        for member, opts in members.items():
            out.setdefault(member, {**opts, **backends.get(member, {})})
    return list(out.items())


def list_metrics() -> list[MetricSpec]:
    """Specs of all registered metrics, sorted by name."""
    from metrics.probe_specs import PROBE_SPECS

    specs = {**{k: c.spec for k, c in _REGISTRY.items()}, **PROBE_SPECS}
    return [specs[k] for k in sorted(specs)]
