"""Metric identities (``name[backend]``): parsing, direction and number format shared by every renderer.

Keeping this in one place means the Markdown, LaTeX and HTML tables and the plots all agree on which
way is better and how many decimals a number gets.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping

log = logging.getLogger(__name__)

ROLLUP_PREFIX = "rollup:"
_IDENTITY = re.compile(r"(?P<name>[^\[]*)(?:\[(?P<backend>.*)\])?")
# Distances between feature distributions: large numbers where a third decimal is noise.
_LARGE_SCALE = ("fvd", "kvd", "fid")


def metric_name(identity: str) -> str:
    """The part before ``[``: what the registry knows the metric by."""
    return identity.split("[", 1)[0]


def metric_backend(identity: str) -> str | None:
    """The bracketed part (``features=tiny``), or None for a bare name."""
    match = _IDENTITY.fullmatch(identity)
    return match.group("backend") if match else None


def is_rollup(identity: str) -> bool:
    return identity.startswith(ROLLUP_PREFIX)


def _registry_directions() -> dict[str, bool | None]:
    """``higher_is_better`` by metric name; empty when the registry cannot be imported or listed.

    Direction only decorates a table (arrows, bold), so a registry that is missing or broken must not
    stop a report from rendering: it is logged and the arrows are left out.
    """
    try:
        from metrics.registry import list_metrics

        specs = list_metrics()
    except Exception as exc:  # see docstring
        log.warning("metric directions unavailable (metrics.registry: %s); tables get no arrows", exc)
        return {}
    out: dict[str, bool | None] = {}
    for spec in specs:
        hib = getattr(spec, "higher_is_better", None)
        out[str(spec.name)] = None if hib is None else bool(hib)
    return out


def metric_direction(identity: str) -> bool | None:
    """True: higher is better, False: lower is better, None: unknown (no arrow, no bold)."""
    return directions_for([identity])[identity]


def directions_for(identities: Iterable[str],
                   overrides: Mapping[str, bool | None] | None = None) -> dict[str, bool | None]:
    """Directions of many identities with one registry look-up; ``overrides`` (by identity or name) win."""
    identities = list(identities)
    overrides = dict(overrides or {})
    needs_registry = any(i not in overrides and metric_name(i) not in overrides and not is_rollup(i)
                         for i in identities)
    known = _registry_directions() if needs_registry else {}
    out: dict[str, bool | None] = {}
    for ident in identities:
        if ident in overrides:
            out[ident] = overrides[ident]
        elif metric_name(ident) in overrides:
            out[ident] = overrides[metric_name(ident)]
        elif is_rollup(ident):
            out[ident] = True
        else:
            out[ident] = known.get(metric_name(ident))
    return out


def arrow(direction: bool | None, up: str = "↑", down: str = "↓") -> str:
    return "" if direction is None else (up if direction else down)


def decimals_for(identity: str, values: Iterable[float] = ()) -> int:
    """3 decimals, or 1 for FVD-like distances (by name, or any magnitude of 100 and more)."""
    if metric_name(identity).removeprefix(ROLLUP_PREFIX).lower().startswith(_LARGE_SCALE):
        return 1
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    return 1 if finite and max(finite) >= 100 else 3


def format_number(value: float | None, decimals: int) -> str:
    """Fixed decimals; '–' for a missing value; never '-0.000'."""
    if value is None or not math.isfinite(value):
        return "–"
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def column_labels(identities: Iterable[str]) -> dict[str, str]:
    """Short headers: the bare name when it is unique among the columns, else the full identity."""
    identities = list(identities)
    names = [metric_name(i) for i in identities]
    return {i: (n if names.count(n) == 1 else i) for i, n in zip(identities, names, strict=True)}


def backend_summary(identities: Iterable[str]) -> str:
    """'[features=tiny] a, b; [flow=dis] c': the backends, grouped, for a caption."""
    groups: dict[str, list[str]] = {}
    for ident in identities:
        groups.setdefault(metric_backend(ident) or "default", []).append(metric_name(ident))
    return "; ".join(f"[{b}] {', '.join(names)}" for b, names in groups.items())


def slug(text: str) -> str:
    """A file-name-safe form of a metric identity, log key or method name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"
