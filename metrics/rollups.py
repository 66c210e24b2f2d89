"""Roll-ups of per-dimension aggregates into headline scores.

``vbench_i2v_rollup`` follows VBench-I2V's ``cal_i2v_final_score.py``: each
dimension is normalised (x - min)/(max - min) with VBench's ranges, then
quality = weighted mean of subject, background, motion_smoothness, aesthetic,
imaging (1) and dynamic_degree (0.5); i2v = weighted mean of camera_motion (0.1),
i2v_subject (1), i2v_background (1); total = mean of the two (weights 1 : 1), as
VBench's ``scripts/cal_i2v_final_score.py`` and ``scripts/constant.py`` (read at
Vchitect/VBench 45e79ec). With every dimension present the result is upstream's
number; ``complete`` says so. With dimensions missing (or NaN) upstream fills them
with 0 (``vbench_i2v_upstream`` does the same, e.g. to check an export); the harness
instead leaves them out of the weighted means, lists them under ``missing`` and stores
the result under another name (``vbench_i2v_partial_*``), so a partial roll-up is
never presented as the VBench score.

``shift_rollup`` is the SHIFT paper's grouping of the raw (unnormalised) scores:
appearance, motion, the overall mean of all available dimensions (Tables 1-2: overall =
(6 appearance + 3 motion) / 9), and the motion-minus-appearance gap its App. B reads as a
reward-hacking signal.

Inputs map base metric names (``dynamic_degree``) to values; stored identities
(``dynamic_degree[flow=dis]``) are accepted and reduced to their base name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

VBENCH_I2V_RANGES: dict[str, tuple[float, float]] = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "motion_smoothness": (0.7060, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "camera_motion": (0.0, 1.0),
    "i2v_subject": (0.1462, 1.0),
    "i2v_background": (0.2615, 1.0),
}
I2V_QUALITY_WEIGHTS: dict[str, float] = {
    "subject_consistency": 1.0, "background_consistency": 1.0, "motion_smoothness": 1.0,
    "aesthetic_quality": 1.0, "imaging_quality": 1.0, "dynamic_degree": 0.5,
}
I2V_WEIGHTS: dict[str, float] = {"camera_motion": 0.1, "i2v_subject": 1.0, "i2v_background": 1.0}

SHIFT_APPEARANCE = ("subject_consistency", "background_consistency", "aesthetic_quality", "imaging_quality",
                    "i2v_subject", "i2v_background")
SHIFT_MOTION = ("temporal_flickering", "motion_smoothness", "dynamic_degree")


def rollup_constituents(identity: str) -> tuple[str, ...]:
    """The dimensions a stored roll-up (``rollup:<prefix>_<key>[...]``) is computed from."""
    name = identity.removeprefix("rollup:").split("[", 1)[0]
    if name.startswith("vbench_i2v"):
        return tuple(VBENCH_I2V_RANGES)
    if name.startswith("shift_"):
        return (*SHIFT_APPEARANCE, *SHIFT_MOTION)
    return ()


# The column group of each stored roll-up in the paper-layout tables (metrics/groups.py), by family prefix:
# the first prefix that matches wins. SHIFT's motion-minus-appearance gap is read as a reward-hacking signal
# (its App. B), so it sits with the hacking diagnostics rather than with the scores.
ROLLUP_GROUPS: tuple[tuple[str, str], ...] = (
    ("vbench_i2v_", "vbench-rollup"),
    ("shift_motion_minus_appearance", "hacking"),
    ("shift_", "shift-rollup"),
)


def rollup_group(identity: str) -> tuple[str, str]:
    """(group key, family prefix) of a stored roll-up; ("other", "") for one no family claims."""
    name = identity.removeprefix("rollup:").split("[", 1)[0]
    for prefix, group in ROLLUP_GROUPS:
        if name.startswith(prefix):
            return group, prefix if group.endswith("-rollup") else ""
    return "other", ""


def _base_values(values: Mapping[str, Any]) -> dict[str, float]:
    """Base name -> finite float; identities are reduced to base names (twice is an error)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        base = key.split("[", 1)[0]
        if base in out:
            raise ValueError(f"two values for dimension {base!r} (e.g. {key!r}); "
                             "pass one identity per metric")
        if value is None:
            continue
        v = float(value)
        if math.isfinite(v):
            out[base] = v
    return out


def normalise(name: str, value: float) -> float:
    lo, hi = VBENCH_I2V_RANGES[name]
    return (value - lo) / (hi - lo)


def _weighted_mean(values: Mapping[str, float], weights: Mapping[str, float]) -> float:
    present = [k for k in weights if k in values]
    if not present:
        return math.nan
    return math.fsum(values[k] * weights[k] for k in present) / math.fsum(weights[k] for k in present)


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def vbench_i2v_rollup(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"quality", "i2v", "total"} (NaN when a group has no dimension), "normalised", "missing" and
    "complete" (every dimension present: the numbers are upstream's)."""
    raw = _base_values(values)
    norm = {k: normalise(k, v) for k, v in raw.items() if k in VBENCH_I2V_RANGES}
    quality = _weighted_mean(norm, I2V_QUALITY_WEIGHTS)
    i2v = _weighted_mean(norm, I2V_WEIGHTS)
    total = _mean([s for s in (quality, i2v) if not math.isnan(s)])
    missing = sorted(k for k in (*I2V_QUALITY_WEIGHTS, *I2V_WEIGHTS) if k not in norm)
    return {"quality": quality, "i2v": i2v, "total": total, "normalised": norm, "missing": missing,
            "complete": not missing}


def vbench_i2v_upstream(values: Mapping[str, Any]) -> dict[str, Any]:
    """Upstream's score script exactly: a missing (or NaN) dimension counts as a raw score of 0."""
    raw = _base_values(values)
    out = vbench_i2v_rollup({k: raw.get(k, 0.0) for k in VBENCH_I2V_RANGES})
    return {**out, "missing": sorted(k for k in VBENCH_I2V_RANGES if k not in raw)}


def shift_rollup(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"appearance", "motion", "overall"} means of the raw scores, and "missing"."""
    raw = _base_values(values)
    appearance = [raw[k] for k in SHIFT_APPEARANCE if k in raw]
    motion = [raw[k] for k in SHIFT_MOTION if k in raw]
    missing = sorted(k for k in (*SHIFT_APPEARANCE, *SHIFT_MOTION) if k not in raw)
    app, mot = _mean(appearance), _mean(motion)
    # SHIFT's reward-hacking diagnostic (App. B, Fig. 5b): the motion-minus-appearance gap over training.
    return {"appearance": app, "motion": mot, "overall": _mean(appearance + motion),
            "motion_minus_appearance": mot - app, "missing": missing}
