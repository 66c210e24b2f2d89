"""Which column group of the paper-layout tables a metric belongs to, as the papers group them.

VBench-I2V and the method papers (SHIFT, FCRM, PG-DPO, Diffusion-APO) lay out their main table as the
quality dimensions, the I2V dimensions with camera motion, the roll-up scores and FVD; method-specific
and training numbers (motion score, distortion rate, hacking diagnostics, rewards, probes) go to a second
table. A metric declares its group on its spec (``MetricSpec.group``); a roll-up, which has no spec, gets
its group from metrics/rollups.py. The report renderers take the order and the titles from here, so a new
metric lands in the right place with no edit under reports/.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricGroup:
    key: str
    title: str
    main: bool  # True: the main results table; False: the method-specific and training metrics table


# In table order; a metric whose spec names no group (or that the registry does not know) is "other".
GROUPS: tuple[MetricGroup, ...] = (
    MetricGroup("vbench-quality", "VBench-I2V quality", True),
    MetricGroup("vbench-i2v", "I2V and camera motion", True),
    MetricGroup("vbench-rollup", "VBench-I2V roll-up", True),
    MetricGroup("shift-rollup", "SHIFT roll-up", True),
    MetricGroup("distribution", "Distribution", True),
    MetricGroup("motion", "Motion", False),
    MetricGroup("hacking", "Hacking diagnostics", False),
    MetricGroup("reward", "Training judges", False),
    MetricGroup("probe", "Training probes", False),
    MetricGroup("other", "Other", False),
)
BY_KEY: dict[str, MetricGroup] = {g.key: g for g in GROUPS}
OTHER = "other"


def group_rank(key: str) -> int:
    """Position of a group in table order (an unknown key sorts with "other", last)."""
    keys = [g.key for g in GROUPS]
    return keys.index(key) if key in keys else keys.index(OTHER)
