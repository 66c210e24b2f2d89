"""The budgets a comparison is made at, stated in the claims report: tuning (whether each method trained at
the learning rate the preset's recorded sweep chose for it: `harness tune`, harness/tuning.py) and compute
(the model passes each method's training spent, as the trainers count them: trainers/base.py)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

PASSES = "compute/passes"


def tuning_summary(results: dict[str, Any] | None, method_configs: dict[str, dict[str, Any]]) -> tuple[bool, str]:
    """(matched, one paragraph) on whether every method of a run trained at the learning rate the preset's
    recorded sweep chose for it (a named variant: its own entry, else its trainer's)."""
    if not results or not results.get("methods"):
        return False, ("Tuning: no learning-rate sweep is recorded with this run's preset: the methods ran at "
                       "hand-set learning rates, so the comparison is not at a matched tuning budget (`harness tune`, "
                       "docs/tuning.md).")
    swept = results["methods"]
    s = results.get("settings", {})
    off = []
    for method, cfg in sorted(method_configs.items()):
        entry = swept.get(method) or swept.get(cfg.get("trainer") or "")
        if entry is None:
            off.append(f"{method} (not swept)")
        elif not math.isclose(float(cfg.get("lr", float("nan"))), float(entry["chosen"]), rel_tol=1e-9):
            off.append(f"{method} (lr {cfg.get('lr'):g}, the sweep chose {entry['chosen']:g})")
    budget = (f"{s.get('points', '?')} learning rates spaced ×{s.get('ratio', '?')} around each preset value, one "
              f"training seed ({s.get('seed', '?')}), chosen by the method's own training-side judge on "
              f"{s.get('videos', '?')} validation clips from index {s.get('start', '?')} that neither training nor "
              "evaluation reads (docs/tuning.md)")
    edge = _edges(swept, method_configs)
    if not off:
        return True, (f"Tuning: matched budget. Every method's learning rate was chosen by the same sweep: {budget}. "
                      f"Variants inherit their trainer's choice.{edge}")
    return False, (f"Tuning: not matched. The preset records a sweep ({budget}), but these methods ran at other "
                   f"learning rates: {'; '.join(off)}.{edge}")


def _edges(swept: dict[str, Any], method_configs: dict[str, dict[str, Any]]) -> str:
    """A sentence naming the run's swept methods whose choice is the grid's lowest or highest rate."""
    names = {cfg.get("trainer") or m for m, cfg in method_configs.items()}
    out = []
    for method in sorted(names & set(swept)):
        lrs = [c["lr"] for c in swept[method].get("candidates", [])]
        if lrs and swept[method]["chosen"] in (min(lrs), max(lrs)):
            out.append(f"{method} ({'highest' if swept[method]['chosen'] == max(lrs) else 'lowest'})")
    return (f" Chosen at the edge of the grid, so a better rate may lie beyond it: {', '.join(out)}." if out else "")


def compute_summary(logs: pd.DataFrame) -> str:
    """One sentence: each trained method's model passes at its last step (mean over seeds) and the spread."""
    if logs is None or logs.empty or "key" not in logs:
        return ""
    rows = logs[logs["key"] == PASSES]
    if rows.empty:
        return ""
    last = rows.sort_values("step").groupby(["method", "seed"])["value"].last().groupby(level=0).mean()
    last = last[last > 0]
    if last.empty:
        return ""
    cells = ", ".join(f"{m} {v:,.0f}" for m, v in last.sort_index().items())
    spread = f" (largest / smallest: {last.max() / last.min():.2f}x)" if len(last) > 1 else ""
    return (f"Compute: model passes each method's training spent ({PASSES}: forward passes of the video model, a "
            f"backward counted as two; prepared pair sets, probes and evaluation not counted), mean over seeds: "
            f"{cells}{spread}. Methods are compared at the compute their preset sections give them; a claim "
            "that says \"at matched compute\" relies on these counts.")
