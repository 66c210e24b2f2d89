"""Distortion rate in the style of Diffusion-APO's Table 1: mean ± std over seeds per method
at the final checkpoint, with each method's training compute in DPO-step equivalents
(one forward/backward pass over a batch of pairs; an APO step with a 5-timestep window
costs 5), so a compute-matched comparison reads off one table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from reports.tables import markdown_grid, method_order

METRIC_PREFIX = "distortion_rate["


def passes_per_step(config: dict[str, Any]) -> int:
    """Denoising passes per optimisation step: the window size for trajectory-windowed methods."""
    ts = config.get("timesteps")
    return int(ts.get("n_high", 0) + ts.get("n_low", 0)) if isinstance(ts, dict) else 1


def distortion_table(agg: pd.DataFrame, method_configs: dict[str, dict[str, Any]],
                     methods: Sequence[str] | None = None) -> pd.DataFrame:
    rows = agg[agg["metric"].str.startswith(METRIC_PREFIX)] if not agg.empty else agg
    if rows.empty:
        return pd.DataFrame()
    out = []
    for m in method_order(rows["method"], methods):
        part = rows[rows["method"] == m]
        final = part.loc[part.groupby("seed")["step"].idxmax()]
        values = final["value"].to_numpy(dtype=float)
        step = int(final["step"].max())
        cfg = method_configs.get(m, {})
        out.append({
            "method": m, "seeds": len(values), "step": step,
            "compute (DPO-step equivalents)": step * passes_per_step(cfg) if m != "base" else 0,
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
        })
    return pd.DataFrame(out)


def distortion_markdown(table: pd.DataFrame, num_videos: int | None) -> str:
    if table.empty:
        return ""
    cells = [[r["method"], str(r["seeds"]), str(r["step"]), str(r["compute (DPO-step equivalents)"]),
              f"{100 * r['mean']:.1f}%" + ("" if np.isnan(r["std"]) else f" ± {100 * r['std']:.1f}%")]
             for _, r in table.iterrows()]
    head = ["Method", "seeds", "final step", "compute (DPO-step equivalents)", "distortion rate ↓"]
    note = (f"Distortion rate at each method's final checkpoint: mean ± sample std over seeds"
            f"{f', {num_videos} eval videos per seed' if num_videos else ''}.\n\n")
    return note + markdown_grid(head, cells)
