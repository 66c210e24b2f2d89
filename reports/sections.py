"""The report's sections, registered once each; ``render_report`` loops over them.

A section is a function decorated with ``@section(name, title)`` in the module that owns its
tables. It receives the run's inputs (``ReportInputs``: run info with the method configs,
aggregates, per-video records, training logs, the training-judge overlap, the plot folder; seeds that
did not reach their scheduled last step are left out of all of them, ``unfinished`` names them) and
returns a ``SectionOutput``: its Markdown, written to ``report/<name>.md`` when not empty, and its
HTML fragment for the page (by default the Markdown under the section's title); or None when the
run has nothing for it (e.g. none of its methods). Sections appear on the page in
``BUILTIN_MODULES`` order, then in the order a module registers them. Method-specific sections find
their methods by trainer name (``methods_of``), never by the names of a preset's variants.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.store import Unfinished
from reports.html import markdown_html
from reports.run_info import RunInfo

BUILTIN_MODULES = ("reports.objectives", "reports.probes", "reports.distortion", "reports.fcrm", "reports.claims",
                   "reports.shift", "reports.hacking")


@dataclass(frozen=True)
class ReportInputs:
    """What every section receives: the run, read once by ``render_report``."""

    info: RunInfo
    agg: pd.DataFrame  # aggregates: method, seed, step, metric, value, ci_low, ci_high
    records: pd.DataFrame  # every per-video value of the run
    logs: pd.DataFrame  # train logs: method, seed, step, key, value
    overlap: Mapping[str, Mapping[str, list[str]]]  # {method: {metric: judges it trained on}}
    plots: Path  # the report's plot folder (rebuilt on each render)
    # seeds evaluated only before their scheduled last step: already left out of agg, records and logs above
    unfinished: tuple[Unfinished, ...] = ()


@dataclass(frozen=True)
class SectionOutput:
    markdown: str  # written to report/<name>.md when not empty
    html: list[str] | None = None  # the page's fragment (heading and body); None: the Markdown, titled


@dataclass(frozen=True)
class Section:
    name: str  # the Markdown file's stem
    title: str  # the page heading
    render: Callable[[ReportInputs], SectionOutput | None]


_REGISTERED: list[Section] = []


def section(name: str, title: str) -> Callable[[Callable[[ReportInputs], SectionOutput | None]],
                                              Callable[[ReportInputs], SectionOutput | None]]:
    """Register the decorated function as the report section ``name`` (its file ``<name>.md``)."""
    def register(render: Callable[[ReportInputs], SectionOutput | None]):
        if any(s.name == name for s in _REGISTERED):
            raise ValueError(f"report section {name!r} registered twice")
        _REGISTERED.append(Section(name, title, render))
        return render
    return register


def registered_sections() -> list[Section]:
    """Every section, in page order (the built-in modules' order, then registration order)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    rank = {module: i for i, module in enumerate(BUILTIN_MODULES)}
    return sorted(_REGISTERED, key=lambda s: rank.get(s.render.__module__, len(rank)))


def page_fragment(sec: Section, output: SectionOutput) -> list[str]:
    """The section's HTML: its own fragment, or its Markdown under its title (paragraphs as notes,
    grids as tables)."""
    return output.html if output.html is not None else markdown_html(sec.title, output.markdown)


def methods_of(trainer: str, method_configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The run's methods trained by ``trainer``: the method of that name and every named variant whose
    settings name it (``trainer: fcrm``), in the run's order."""
    return [m for m, c in method_configs.items() if m == trainer or c.get("trainer") == trainer]
