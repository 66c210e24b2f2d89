"""Distortion rate in the style of Diffusion-APO's Table 1: mean ± std over seeds per method
at the final checkpoint, with each method's training compute in DPO-step equivalents
(one forward/backward pass over a batch of pairs; an APO step with a 5-timestep window
costs 5), so a compute-matched comparison reads off one table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from reports.sections import ReportInputs, SectionOutput, section
from reports.tables import markdown_grid, method_order

METRIC_PREFIX = "distortion_rate["


COMPUTE_NOTE = ("Compute counts training passes over a pair batch (an APO step with a 5-timestep window counts 5); "
                "the rollouts of APO's online and half-online stages (2 and 1 videos per pair) are not counted.")


def passes_per_step(config: dict[str, Any]) -> int:
    """Denoising passes per optimization step: the window size for trajectory-windowed methods."""
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
            f"{f', {num_videos} eval videos per seed' if num_videos else ''}. {COMPUTE_NOTE}\n\n")
    return note + markdown_grid(head, cells)


def distortion_html(table: pd.DataFrame) -> list[str]:
    if table.empty or table["seeds"].max() < 2:
        return []  # the Table 1 view needs a spread over seeds
    shown = table.assign(mean=(100 * table["mean"]).round(1), std=(100 * table["std"]).round(1))
    return ["<h2>Distortion rate over seeds (Diffusion-APO Table 1)</h2>",
            '<p class="note">Final checkpoint of each method, in %: mean and sample std over seeds. '
            f"{COMPUTE_NOTE}</p>",
            '<div class="scroll">' + shown.to_html(index=False, na_rep="–", border=0) + "</div>"]


@section("distortion", "Distortion rate over seeds (Diffusion-APO Table 1)")
def distortion_section(run: ReportInputs) -> SectionOutput | None:
    """``distortion.md`` when the run measured the distortion rate; on the page with several seeds."""
    table = distortion_table(run.agg, run.info.method_configs, run.info.methods)
    if table.empty:
        return None
    return SectionOutput(distortion_markdown(table, run.info.num_videos), distortion_html(table))
