"""Curves over training: each metric against the step and against the model passes spent (one line per
method), and the training logs.

The compute axis is the trainers' own count (trainers/base.py: ``compute/passes``, forward passes of the
video model with a backward counted as two, cumulative, logged every step): methods whose steps cost 1x
and 10x (SFT against FCRM's rollouts) or whose steps are windows of timesteps (APO) compare at matched
compute there, as the papers compare them. The base model is at 0 passes.

Figures are built with ``matplotlib.figure.Figure`` and saved through the Agg renderer, never through
pyplot: no global figure state, no GUI backend, nothing changed for other code in the process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from metrics.identity import directions_for
from reports.identity import arrow, slug
from reports.tables import BASE, clean_aggregates, eval_set_size, method_order, metric_order

_SIZE = (6.0, 3.8)
_DPI = 110
_SEED_STYLES = ("-", "--", "-.", ":")
PASSES = "compute/passes"
PASSES_LABEL = "model passes (forward; a backward counts 2)"


def save_figure(fig: Figure, directory: Path, stem: str, used: set[str]) -> Path:
    name, k = stem, 2
    while name in used:  # two identities may slug alike
        name, k = f"{stem}_{k}", k + 1
    used.add(name)
    path = directory / f"{name}.png"
    fig.savefig(path, dpi=_DPI)
    return path


def curve_figure(title: str, two_line_xlabel: bool = False) -> tuple[Figure, Axes]:
    """A one-axes curve figure with fixed margins: the report draws about a hundred of them, and matplotlib's
    constrained layout draws each twice (it measures, then renders), which took about half the report's
    time. The margins fit the curves' tick labels, one- or two-line x labels and the title, which is broken
    after a comma when it is too long for one line (a metric identity with many options)."""
    title = wrap_title(title)
    fig = Figure(figsize=_SIZE)
    fig.subplots_adjust(left=0.13, right=0.98, top=0.86 if "\n" in title else 0.92,
                        bottom=0.2 if two_line_xlabel else 0.14)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    return fig, ax


def wrap_title(text: str, width: int = 80) -> str:
    """``text`` on two lines, broken after the last comma that keeps the first line within ``width``
    characters, when it is longer than that (unchanged where there is no such comma)."""
    cut = text.rfind(",", 0, width) if len(text) > width else -1
    return text if cut < 0 else f"{text[:cut + 1]}\n{text[cut + 1:]}"


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


def _plot_method(ax: Axes, rows: pd.DataFrame, color: tuple[float, ...], label: str, x: str = "step") -> None:
    """One seed: line and CI band (where stored). Several seeds: mean line and min-max band, at each
    step's mean ``x`` over the seeds (the steps' passes can differ a little between seeds)."""
    seeds = rows["seed"].unique()
    if len(seeds) == 1:
        s = rows.sort_values("step")
        ax.plot(s[x], s["value"], marker="o", ms=3, color=color, label=label)
        band = s.dropna(subset=["ci_low", "ci_high"])
        if len(band) > 1:
            ax.fill_between(band[x], band["ci_low"], band["ci_high"], color=color, alpha=0.2, lw=0)
        return
    wide = rows.pivot_table(index="step", columns="seed", values="value", aggfunc="mean").sort_index()
    at = rows.groupby("step")[x].mean().reindex(wide.index)
    ax.plot(at, wide.mean(axis=1), marker="o", ms=3, color=color, label=f"{label} (mean of {len(seeds)} seeds)")
    ax.fill_between(at, wide.min(axis=1), wide.max(axis=1), color=color, alpha=0.2, lw=0)


def passes_at_steps(logs: pd.DataFrame | None) -> pd.DataFrame:
    """(method, seed, step, passes): the cumulative model passes logged at each step (trainers/base.py).
    Empty for a run whose trainers did not count them (written before they did)."""
    cols = ["method", "seed", "step", "passes"]
    if logs is None or logs.empty:
        return pd.DataFrame(columns=cols)
    rows = logs[logs["key"] == PASSES]
    return pd.DataFrame({"method": rows["method"], "seed": rows["seed"], "step": rows["step"].astype(int),
                         "passes": pd.to_numeric(rows["value"], errors="coerce")}).dropna()


def metric_points(agg: pd.DataFrame, logs: pd.DataFrame | None, metric: str) -> pd.DataFrame:
    """Every checkpoint's value of ``metric`` with its step and the passes spent to reach it: the base
    model at step 0 and 0 passes as every method's first point. ``passes`` is NaN where the run logged
    none for that checkpoint (then it is left out of the compute plot only)."""
    agg = clean_aggregates(agg)
    data = agg[(agg["metric"] == metric) & agg["value"].notna()]
    base_rows = data[data["method"] == BASE]
    base = base_rows.iloc[0] if not base_rows.empty else None
    parts = [base_rows.iloc[:1][["method", "seed", "step", "value", "ci_low", "ci_high"]]] if base is not None else []
    for m in method_order(data["method"]):
        rows = data[data["method"] == m]
        if m != BASE and not rows.empty:
            parts.append(_with_base(rows[["seed", "step", "value", "ci_low", "ci_high"]], base).assign(method=m))
    if not parts:
        return pd.DataFrame(columns=["method", "seed", "step", "passes", "value", "ci_low", "ci_high"])
    out = pd.concat(parts, ignore_index=True)
    out["step"] = out["step"].astype(int)
    out = out.merge(passes_at_steps(logs), on=["method", "seed", "step"], how="left")
    out.loc[out["step"] == 0, "passes"] = 0.0  # the starting model: nothing spent yet
    return out[["method", "seed", "step", "passes", "value", "ci_low", "ci_high"]]


def _weighted_mean(rows: pd.DataFrame) -> float:
    v = pd.to_numeric(rows["value"], errors="coerce").to_numpy(float)
    w = pd.to_numeric(rows["weight"], errors="coerce").fillna(1.0).to_numpy(float)
    ok = np.isfinite(v) & (w > 0)
    return float(np.dot(w[ok], v[ok]) / w[ok].sum()) if ok.any() else float("nan")


def on_shared_videos(agg: pd.DataFrame, records: pd.DataFrame | None) -> tuple[pd.DataFrame, dict[str, str]]:
    """The aggregates a curve plots, every point on the same videos, and a note per metric where that took work.

    A run evaluates the base model and each last checkpoint on the final eval set and the checkpoints between on
    its first ``eval.num_videos`` clips (same seeds). Joined as they are, a curve would move with the subset, not
    with training. So for a metric whose checkpoints differ in set size, each checkpoint's value and bootstrap
    interval are recomputed from its per-video records over the videos all of them share, once the records are
    seen to reproduce every stored value on its own set (a weighted mean). A metric without per-video records
    (a roll-up, a set metric) or whose records do not reproduce its values keeps only its checkpoints on the
    largest set. Metrics evaluated on one set size are returned as stored."""
    from harness.store import bootstrap_ci

    sizes, notes, parts = eval_set_size(agg), {}, []
    rollups = agg["metric"].str.startswith("rollup:")
    for metric, rows in agg[~rollups].groupby("metric", sort=False):
        found = sorted(set(sizes[rows.index].dropna().astype(int)))
        if len(found) < 2:
            parts.append(rows)
            continue
        rec = records[records["metric"] == metric] if records is not None and not records.empty else None
        by_ckpt = dict(iter(rec.groupby("checkpoint_id"))) if rec is not None else {}
        ids = [set(by_ckpt[c]["video_id"]) if c in by_ckpt else set() for c in rows["checkpoint_id"]]
        shared = set.intersection(*ids) if ids else set()
        faithful = bool(shared) and all(
            c in by_ckpt and (np.isclose(_weighted_mean(by_ckpt[c]), v, rtol=1e-9, atol=1e-12)
                              or (np.isnan(v) and np.isnan(_weighted_mean(by_ckpt[c]))))
            for c, v in zip(rows["checkpoint_id"], pd.to_numeric(rows["value"], errors="coerce"), strict=True))
        if not faithful:
            parts.append(rows[sizes[rows.index] == found[-1]])
            notes[metric] = f"only the checkpoints on {found[-1]} eval videos (no per-video values at {found[0]})"
            continue
        out = rows.copy()
        for i, c in zip(rows.index, rows["checkpoint_id"], strict=True):
            sub = by_ckpt[c][by_ckpt[c]["video_id"].isin(shared)]
            v = pd.to_numeric(sub["value"], errors="coerce").to_numpy(float)
            w = pd.to_numeric(sub["weight"], errors="coerce").fillna(1.0).to_numpy(float)
            ok = np.isfinite(v) & (w > 0)
            mean, lo, hi = bootstrap_ci(v[ok], w[ok]) if ok.any() else (float("nan"),) * 3
            out.loc[i, ["value", "ci_low", "ci_high"]] = [mean, lo, hi]
        parts.append(out)
        notes[metric] = f"all points on the same {len(shared)} eval videos (tables: {found[-1]} at base and last)"
    dims = pd.concat(parts) if parts else agg.iloc[:0]
    parts.append(_rollups_on_shared_videos(agg[rollups], agg[~rollups], dims, sizes, notes))
    return (pd.concat(parts).sort_index() if parts else agg), notes


def _rollups_on_shared_videos(rolls: pd.DataFrame, stored: pd.DataFrame, shared: pd.DataFrame, sizes: pd.Series,
                              notes: dict[str, str]) -> pd.DataFrame:
    """Roll-ups (no per-video values) recomputed from their dimensions' values on the shared videos, where every
    dimension they read was recomputed there and the dimensions' stored values reproduce each stored roll-up;
    else only their points on the largest set."""
    from harness.evaluate import rollup_values
    from metrics.rollups import rollup_constituents

    def by_checkpoint(rows: pd.DataFrame) -> dict[int, dict[str, float]]:
        return {int(c): {m.split("[")[0]: float(v) for m, v in zip(g["metric"], g["value"], strict=True)}
                for c, g in rows.groupby("checkpoint_id")}

    def rollup(values: dict[str, float] | None, name: str) -> float:
        return rollup_values(values or {}).get(name, (float("nan"), []))[0]

    full, moved = by_checkpoint(stored), by_checkpoint(shared)
    recomputed = {n.split("[")[0]: n for n, text in notes.items() if text.startswith("all points on the same")}
    out = []
    for metric, rows in rolls.groupby("metric", sort=False):
        found = sorted(set(sizes[rows.index].dropna().astype(int)))
        if len(found) < 2:
            out.append(rows)
            continue
        name, ckpts = metric.split("[")[0], [int(c) for c in rows["checkpoint_id"]]
        reads = {d for c in ckpts for d in full.get(c, {})} & set(rollup_constituents(metric))
        faithful = bool(reads) and reads <= set(recomputed) and all(
            np.isclose(rollup(full.get(c), name), v, rtol=1e-9, atol=1e-12)
            for c, v in zip(ckpts, pd.to_numeric(rows["value"]), strict=True))
        if not faithful:
            out.append(rows[sizes[rows.index] == found[-1]])
            notes[metric] = f"only the checkpoints on {found[-1]} eval videos (no per-video values at {found[0]})"
            continue
        rows = rows.assign(value=[rollup(moved.get(c), name) for c in ckpts], ci_low=None, ci_high=None)
        out.append(rows)
        notes[metric] = notes[recomputed[sorted(reads)[0]]].replace("all points", "all points (from its dimensions)")
    return pd.concat(out) if out else rolls


def metric_curves(agg: pd.DataFrame, out_dir: Path, methods: Sequence[str] | None = None,
                  metrics: Sequence[str] | None = None,
                  directions: Mapping[str, bool | None] | None = None,
                  logs: pd.DataFrame | None = None, records: pd.DataFrame | None = None) -> list[Path]:
    """Per metric, value against training step (``metric_<id>.png``) and, when the run's ``logs`` hold the
    trainers' pass counts, against model passes (``metric_<id>_vs_passes.png``, next to it): base at
    step 0 and 0 passes, one line per method. Every point of a curve rests on the same eval videos
    (``on_shared_videos``, from the per-video ``records``), and the figure says so under its axis."""
    agg, notes = on_shared_videos(agg, records)
    agg = clean_aggregates(agg)
    out_dir.mkdir(parents=True, exist_ok=True)
    order = method_order(agg["method"], methods)
    colors = method_colors(order)
    idents = metric_order(agg["metric"], metrics)
    dirs = directions_for(idents, directions)
    paths: list[Path] = []
    used: set[str] = set()
    for ident in idents:
        points = metric_points(agg, logs, ident)
        if points.empty:  # e.g. temporal flickering when no video passed the static filter
            continue
        base_rows = points[points["method"] == BASE]
        base = base_rows.iloc[0] if not base_rows.empty else None
        better = None if dirs[ident] is None else ("higher" if dirs[ident] else "lower") + " is better"
        counted = points[(points["method"] != BASE) & points["passes"].notna() & (points["step"] > 0)]
        axes = [("step", "training step", "")]
        if not counted.empty:
            axes.append(("passes", PASSES_LABEL, "_vs_passes"))
        for x, xlabel, suffix in axes:
            note = notes.get(ident, "")
            fig, ax = curve_figure(ident if x == "step" else f"{ident} at matched compute", bool(note))
            for m in order:
                rows = points[points["method"] == m].dropna(subset=[x])
                if m != BASE and not (rows[rows["step"] > 0] if x == "passes" else rows).empty:
                    _plot_method(ax, rows, colors[m], m, x)
            if base is not None:
                ax.axhline(base["value"], color="grey", lw=0.8, ls=":")
                lo, hi = base["ci_low"], base["ci_high"]
                yerr = [[base["value"] - lo], [hi - base["value"]]] if pd.notna(lo) and pd.notna(hi) else None
                ax.errorbar([0], [base["value"]], yerr=yerr, fmt="o", color="black", capsize=3, label=BASE,
                            zorder=3)
            ax.set_xlabel(f"{xlabel}\n{note}" if note else xlabel, fontsize=8 if note else None)
            ax.set_ylabel(f"value {arrow(dirs[ident])} ({better})" if better else "value")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            paths.append(save_figure(fig, out_dir, f"metric_{slug(ident)}{suffix}", used))
    return paths


def smoothing_window(n: int) -> int:
    """Light smoothing: about a twentieth of the curve, at most 25 steps; 1 (none) for short curves."""
    return max(1, min(25, n // 20))


def constant_series(logs: pd.DataFrame) -> dict[str, str]:
    """Logged keys that never change: every method's and seed's series holds one value, and at least one
    has several points (a key logged once, such as ``seconds`` at a single checkpoint, is not folded).
    Each maps to its value and the methods (by name) that logged it: ``"0 (apo)"``, ``"16 (awm), 8 (dpo)"``."""
    if logs.empty:
        return {}
    logs = logs.assign(value=pd.to_numeric(logs["value"], errors="coerce"))
    out: dict[str, str] = {}
    for key, data in logs.groupby("key", sort=True):
        series = data.groupby(["method", "seed"])["value"]
        if series.nunique(dropna=False).max() > 1 or series.size().max() < 2:
            continue
        by_value: dict[str, list[str]] = {}
        for m, v in data.groupby("method", sort=True)["value"].first().items():
            by_value.setdefault(f"{v:.6g}", []).append(str(m))
        out[str(key)] = ", ".join(f"{v} ({', '.join(ms)})" for v, ms in by_value.items())
    return out


def folded_note(folded: Mapping[str, str]) -> str:
    """The one caption line that lists the folded series (empty when there are none)."""
    if not folded:
        return ""
    return "Constant over the run, not plotted: " + "; ".join(f"{k} = {v}" for k, v in folded.items()) + "."


def training_curves(logs: pd.DataFrame, out_dir: Path, methods: Sequence[str] | None = None) -> list[Path]:
    """One PNG per logged key (loss first): raw values faint, a rolling mean on top, per method and seed.
    Keys that never change (``constant_series``) are folded into a caption line (``folded_note``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if logs.empty:
        return []
    folded = constant_series(logs)
    logs = logs.assign(value=pd.to_numeric(logs["value"], errors="coerce"))
    order = method_order(logs["method"], methods)
    colors = method_colors(order)
    keys = sorted((k for k in logs["key"].unique() if k not in folded), key=lambda k: (k != "loss", k))
    paths: list[Path] = []
    used: set[str] = set()
    for key in keys:
        data = logs[logs["key"] == key]
        shown = data[data["method"].isin(order)]
        smoothed = any(smoothing_window(len(g)) > 1 for _, g in shown.groupby(["method", "seed"]))
        note = " (faint: raw, line: rolling mean)" if smoothed else ""
        fig, ax = curve_figure(f"training: {key}{note}")
        for m in order:
            rows = data[data["method"] == m]
            seeds = sorted(rows["seed"].unique())
            for i, seed in enumerate(seeds):
                s = rows[rows["seed"] == seed].sort_values("step")
                style = _SEED_STYLES[i % len(_SEED_STYLES)]
                label = f"{m} seed {seed}" if len(seeds) > 1 else m
                w = smoothing_window(len(s))
                if w > 1:
                    ax.plot(s["step"], s["value"], color=colors[m], alpha=0.25, lw=0.8)
                y = s["value"].rolling(w, min_periods=1).mean()
                ax.plot(s["step"], y, color=colors[m], ls=style, lw=1.4, label=label)
        ax.set_xlabel("training step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        paths.append(save_figure(fig, out_dir, f"train_{slug(key)}", used))
    return paths
