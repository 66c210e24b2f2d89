"""Each method's own training objective: did the method move the series it optimizes the right way?

Every trainer declares the logged series that is its objective or training reward and its good
direction (``Trainer.training_objective``, trainers/claims.py). Per seed, the change is the mean of
the last tenth of the series' logged steps minus the mean of the first tenth (at least one step
each); the section reports the mean change over seeds with its 95 % t-interval over seeds and a
verdict on the series: *rises* or *falls* when the interval excludes zero, *undecided* otherwise
(always with one seed). A method whose objective moved the wrong way, or not measurably, is flagged
in the last column, so a method that fails to optimize its own objective shows at a glance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from reports.html import markdown_html, plots_html
from reports.plots import save_figure
from reports.sections import ReportInputs, SectionOutput, section
from reports.tables import markdown_grid
from trainers.claims import Objective
from trainers.registry import trainer_for

RISES, FALLS, UNDECIDED = "rises", "falls", "undecided"


def seed_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and t-interval (95 %) half-width over seeds (nan half-width with one seed)."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return float(v.mean()) if len(v) else float("nan"), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def series(logs: pd.DataFrame, method: str, key: str) -> pd.DataFrame:
    """The finite logged values of ``key`` for ``method``: seed, step, value, by seed and step."""
    if logs.empty:
        return pd.DataFrame(columns=["seed", "step", "value"])
    rows = logs[(logs["method"] == method) & (logs["key"] == key)]
    rows = rows[np.isfinite(rows["value"].astype(float))]
    return rows[["seed", "step", "value"]].sort_values(["seed", "step"])


def tenth_changes(rows: pd.DataFrame) -> dict[int, tuple[float, float]]:
    """Per seed: (mean of the first tenth of its logged steps, mean of the last tenth)."""
    out = {}
    for seed, p in rows.groupby("seed"):
        v = p.sort_values("step")["value"].to_numpy(float)
        k = max(1, len(v) // 10)
        out[int(seed)] = (float(v[:k].mean()), float(v[-k:].mean()))
    return out


@dataclass(frozen=True)
class ObjectiveChange:
    method: str
    objective: Objective
    first: float  # mean over seeds of the first tenth
    last: float
    change: float  # mean over seeds of last - first
    half: float  # 95 % t-interval half-width over seeds
    seeds: int

    @property
    def verdict(self) -> str:
        if not (np.isfinite(self.change) and np.isfinite(self.half)):
            return UNDECIDED
        return RISES if self.change - self.half > 0 else FALLS if self.change + self.half < 0 else UNDECIDED

    @property
    def improves(self) -> bool | None:
        """True when the series moved the good way, False when the bad way, None when undecided."""
        if self.verdict == UNDECIDED:
            return None
        return (self.verdict == RISES) == self.objective.higher


def objective_change(logs: pd.DataFrame, method: str, objective: Objective) -> ObjectiveChange | None:
    """The change of ``method``'s objective over training; None when the run logged none of it."""
    per_seed = tenth_changes(series(logs, method, objective.key))
    if not per_seed:
        return None
    change, half = seed_interval([b - a for a, b in per_seed.values()])
    return ObjectiveChange(method, objective, float(np.mean([a for a, _ in per_seed.values()])),
                           float(np.mean([b for _, b in per_seed.values()])), change, half, len(per_seed))


def run_objectives(logs: pd.DataFrame, methods: Sequence[str],
                   method_configs: Mapping[str, Mapping[str, Any]]) -> list[ObjectiveChange]:
    """One entry per run method whose trainer declares an objective the run logged, in run order."""
    out = []
    for method in methods:
        try:
            objective = trainer_for(method, dict(method_configs.get(method) or {})).training_objective
        except KeyError:  # the base model, or a method of a trainer this checkout does not have
            continue
        found = objective_change(logs, method, objective) if objective is not None else None
        if found is not None:
            out.append(found)
    return out


_GLANCE = {True: "✓ improves", False: "✗ worsens", None: "? undecided"}


def objectives_markdown(changes: Sequence[ObjectiveChange]) -> str:
    if not changes:
        return ""
    cells = [[c.method, f"{c.objective.key} ({c.objective.label})", c.objective.direction,
              f"{c.first:.4g}", f"{c.last:.4g}", f"{c.change:+.4g} ± {c.half:.2g}" if np.isfinite(c.half)
              else f"{c.change:+.4g} (one seed)", str(c.seeds), c.verdict, _GLANCE[c.improves]] for c in changes]
    head = ("Each method's own training objective (the series its trainer declares, trainers/claims.py): mean of "
            "the first and of the last tenth of its logged steps, averaged over seeds, and the change with its "
            "95 % t-interval over seeds. The series *rises* or *falls* when the interval excludes zero; the last "
            "column says whether that is the method's good direction.\n\n")
    return head + markdown_grid(["method", "series", "good direction", "first tenth", "last tenth",
                                 "change (95 % over seeds)", "seeds", "the series", "own objective"], cells)


def objectives_plot(logs: pd.DataFrame, changes: Sequence[ObjectiveChange], out_dir: Path) -> list[Path]:
    """``objectives.png``: one panel per method, its objective's mean over seeds against the step,
    with the seeds' min-max spread shaded."""
    if not changes:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(3.6 * len(changes), 3.2), layout="constrained")
    for ax, c in zip(fig.subplots(1, len(changes), squeeze=False)[0], changes, strict=True):
        by_step = series(logs, c.method, c.objective.key).groupby("step")["value"]
        mean, lo, hi = by_step.mean(), by_step.min(), by_step.max()
        ax.plot(mean.index, mean.to_numpy(), lw=1.2)
        ax.fill_between(mean.index, lo.to_numpy(), hi.to_numpy(), alpha=0.25, lw=0)
        ax.set_title(f"{c.method}: {c.verdict} ({'↑' if c.objective.higher else '↓'} good)", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(c.objective.key, fontsize=8)
    return [save_figure(fig, out_dir, "objectives", set())]


@section("objectives", "Own training objectives")
def objectives_section(run: ReportInputs) -> SectionOutput | None:
    """``objectives.md`` and ``plots/objectives.png`` when a method logged its declared objective."""
    changes = run_objectives(run.logs, run.info.methods, run.info.method_configs)
    text = objectives_markdown(changes)
    if not text:
        return None
    plots = objectives_plot(run.logs, changes, run.plots)
    return SectionOutput(text, markdown_html("Own training objectives", text) + [plots_html(plots)])
