"""How metric identities and their numbers are shown: arrows, decimals, column labels, file names.

Shared by every renderer, so that the Markdown, LaTeX and HTML tables and the plots all agree on how
many decimals a number gets; the identities' parsing and direction are metrics/identity.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from metrics.identity import ROLLUP_PREFIX, is_rollup, metric_backend, metric_name
from metrics.rollups import rollup_group

# Distances between feature distributions: large numbers where a third decimal is noise.
_LARGE_SCALE = ("fvd", "kvd", "fid")


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


def header_labels(identities: Iterable[str]) -> dict[str, str]:
    """Headers of the grouped tables: as ``column_labels``, with a roll-up's family prefix left to its group's
    title (``rollup:vbench_i2v_partial_total`` -> ``partial total`` under "VBench-I2V roll-up") and underscores
    as spaces, so that a header can wrap onto two lines in a narrow column."""
    out = {}
    for ident, label in column_labels(identities).items():
        if is_rollup(ident):
            label = label.removeprefix(ROLLUP_PREFIX).removeprefix(rollup_group(ident)[1])
        out[ident] = label.replace("_", " ")
    return out


def backend_summary(identities: Iterable[str]) -> str:
    """'[features=tiny] a, b; [flow=dis] c': the backends, grouped, for a caption."""
    groups: dict[str, list[str]] = {}
    for ident in identities:
        groups.setdefault(metric_backend(ident) or "default", []).append(metric_name(ident))
    return "; ".join(f"[{b}] {', '.join(names)}" for b, names in groups.items())


def slug(text: str) -> str:
    """A file-name-safe form of a metric identity, log key or method name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"
