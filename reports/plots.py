"""Curves over training: each metric against the step (one line per method), and the training logs.

Figures are built with ``matplotlib.figure.Figure`` and saved through the Agg renderer, never through
pyplot: no global figure state, no GUI backend, nothing changed for other code in the process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from metrics.identity import directions_for
from reports.identity import arrow, slug
from reports.tables import BASE, clean_aggregates, method_order, metric_order

_SIZE = (6.0, 3.8)
_DPI = 110
_SEED_STYLES = ("-", "--", "-.", ":")


def save_figure(fig: Figure, directory: Path, stem: str, used: set[str]) -> Path:
    name, k = stem, 2
    while name in used:  # two identities may slug alike
        name, k = f"{stem}_{k}", k + 1
    used.add(name)
    path = directory / f"{name}.png"
    fig.savefig(path, dpi=_DPI)
    return path


def method_colors(methods: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """A stable colour per method (base black), the same in every figure."""
    cmap = colormaps["tab10"]
    others = [m for m in methods if m != BASE]
    return {BASE: (0.0, 0.0, 0.0, 1.0)} | {m: cmap(i % 10) for i, m in enumerate(others)}


def _with_base(rows: pd.DataFrame, base: pd.Series | None) -> pd.DataFrame:
    """Prepend the base model's value as step 0 of every seed's curve (it is every method's step 0)."""
    if base is None:
        return rows
    point = {"step": 0, "value": base["value"], "ci_low": base["ci_low"], "ci_high": base["ci_high"]}
    has_zero = set(rows["seed"][rows["step"] == 0])
    extra = [{"seed": s, **point} for s in rows["seed"].unique() if s not in has_zero]
    return pd.concat([pd.DataFrame(extra), rows], ignore_index=True) if extra else rows


def _plot_method(ax: Axes, rows: pd.DataFrame, color: tuple[float, ...], label: str) -> None:
    """One seed: line and CI band (where stored). Several seeds: mean line and min-max band."""
    seeds = rows["seed"].unique()
    if len(seeds) == 1:
        s = rows.sort_values("step")
        ax.plot(s["step"], s["value"], marker="o", ms=3, color=color, label=label)
        band = s.dropna(subset=["ci_low", "ci_high"])
        if len(band) > 1:
            ax.fill_between(band["step"], band["ci_low"], band["ci_high"], color=color, alpha=0.2, lw=0)
        return
    wide = rows.pivot_table(index="step", columns="seed", values="value", aggfunc="mean").sort_index()
    ax.plot(wide.index, wide.mean(axis=1), marker="o", ms=3, color=color,
            label=f"{label} (mean of {len(seeds)} seeds)")
    ax.fill_between(wide.index, wide.min(axis=1), wide.max(axis=1), color=color, alpha=0.2, lw=0)


def metric_curves(agg: pd.DataFrame, out_dir: Path, methods: Sequence[str] | None = None,
                  metrics: Sequence[str] | None = None,
                  directions: Mapping[str, bool | None] | None = None) -> list[Path]:
    """One PNG per metric: value against training step, base at step 0, one line per method."""
    agg = clean_aggregates(agg)
    out_dir.mkdir(parents=True, exist_ok=True)
    order = method_order(agg["method"], methods)
    colors = method_colors(order)
    idents = metric_order(agg["metric"], metrics)
    dirs = directions_for(idents, directions)
    paths: list[Path] = []
    used: set[str] = set()
    for ident in idents:
        data = agg[(agg["metric"] == ident) & agg["value"].notna()]
        if data.empty:  # e.g. temporal flickering when no video passed the static filter
            continue
        base_rows = data[data["method"] == BASE]
        base = base_rows.iloc[0] if not base_rows.empty else None
        fig = Figure(figsize=_SIZE, layout="constrained")
        ax = fig.add_subplot()
        for m in order:
            rows = data[data["method"] == m]
            if m != BASE and not rows.empty:
                _plot_method(ax, _with_base(rows, base), colors[m], m)
        if base is not None:
            ax.axhline(base["value"], color="grey", lw=0.8, ls=":")
            lo, hi = base["ci_low"], base["ci_high"]
            yerr = [[base["value"] - lo], [hi - base["value"]]] if pd.notna(lo) and pd.notna(hi) else None
            ax.errorbar([0], [base["value"]], yerr=yerr, fmt="o", color="black", capsize=3, label=BASE,
                        zorder=3)
        better = None if dirs[ident] is None else ("higher" if dirs[ident] else "lower") + " is better"
        ax.set_title(ident, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"value {arrow(dirs[ident])} ({better})" if better else "value")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        paths.append(save_figure(fig, out_dir, f"metric_{slug(ident)}", used))
    return paths


def smoothing_window(n: int) -> int:
    """Light smoothing: about a twentieth of the curve, at most 25 steps; 1 (none) for short curves."""
    return max(1, min(25, n // 20))


def training_curves(logs: pd.DataFrame, out_dir: Path, methods: Sequence[str] | None = None) -> list[Path]:
    """One PNG per logged key (loss first): raw values faint, a rolling mean on top, per method and seed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if logs.empty:
        return []
    logs = logs.assign(value=pd.to_numeric(logs["value"], errors="coerce"))
    order = method_order(logs["method"], methods)
    colors = method_colors(order)
    keys = sorted(logs["key"].unique(), key=lambda k: (k != "loss", k))
    paths: list[Path] = []
    used: set[str] = set()
    for key in keys:
        data = logs[logs["key"] == key]
        fig = Figure(figsize=_SIZE, layout="constrained")
        ax = fig.add_subplot()
        smoothed = False
        for m in order:
            rows = data[data["method"] == m]
            seeds = sorted(rows["seed"].unique())
            for i, seed in enumerate(seeds):
                s = rows[rows["seed"] == seed].sort_values("step")
                style = _SEED_STYLES[i % len(_SEED_STYLES)]
                label = f"{m} seed {seed}" if len(seeds) > 1 else m
                w = smoothing_window(len(s))
                if w > 1:
                    smoothed = True
                    ax.plot(s["step"], s["value"], color=colors[m], alpha=0.25, lw=0.8)
                y = s["value"].rolling(w, min_periods=1).mean()
                ax.plot(s["step"], y, color=colors[m], ls=style, lw=1.4, label=label)
        note = " (faint: raw, line: rolling mean)" if smoothed else ""
        ax.set_title(f"training: {key}{note}", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        paths.append(save_figure(fig, out_dir, f"train_{slug(key)}", used))
    return paths
