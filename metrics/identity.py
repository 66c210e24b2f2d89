"""Metric identities (``name[backend]``): parsing, and which way is better.

A stored result is keyed by its metric identity; the leaderboard comparison (harness/regress.py)
and every report renderer read the name, backend and direction from here, so they all agree.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

from metrics.groups import OTHER
from metrics.rollups import rollup_group

log = logging.getLogger(__name__)

ROLLUP_PREFIX = "rollup:"
_IDENTITY = re.compile(r"(?P<name>[^\[]*)(?:\[(?P<backend>.*)\])?")


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


def _registry_groups() -> dict[str, str]:
    """``group`` by metric name (metrics/groups.py); empty when the registry cannot be listed (as directions:
    grouping only lays a table out, so every metric then goes to "other" rather than the report failing)."""
    try:
        from metrics.registry import list_metrics

        specs = list_metrics()
    except Exception as exc:  # see docstring
        log.warning("metric groups unavailable (metrics.registry: %s); tables are not grouped", exc)
        return {}
    return {str(spec.name): str(getattr(spec, "group", OTHER)) for spec in specs}


def undefined_notes(identities: Iterable[str]) -> dict[str, str]:
    """Each identity's ``MetricSpec.undefined`` (when and why it has no value), "" when it declares none or the
    registry cannot be listed (a note only explains a table)."""
    identities = list(identities)
    try:
        from metrics.registry import list_metrics

        notes = {str(spec.name): str(getattr(spec, "undefined", "")) for spec in list_metrics()}
    except Exception as exc:  # see _registry_directions
        log.warning("metric notes unavailable (metrics.registry: %s)", exc)
        notes = {}
    return {i: notes.get(metric_name(i), "") for i in identities}


def groups_for(identities: Iterable[str]) -> dict[str, str]:
    """The table group key of each identity, with one registry look-up; roll-ups by their family."""
    identities = list(identities)
    known = _registry_groups() if any(not is_rollup(i) for i in identities) else {}
    return {i: rollup_group(i)[0] if is_rollup(i) else known.get(metric_name(i), OTHER) for i in identities}


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
