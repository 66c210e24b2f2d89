"""SHIFT's tables on a run: its Table 1 (base, SFT, SHIFT) and its Table 3 ablation (A0-A4).

Columns as the paper: VBench appearance, motion and overall (the raw-score grouping of
metrics.rollups.shift_rollup over the dimensions the tiny world has), motion score, FVD,
training time relative to SFT; plus dynamic degree, which the paper singles out. Each
method's final checkpoint, mean over seeds. Confidence: per-video paired differences from
the base model at step 0 (same eval conditions and seeds), mean and 95 % interval
(1.96 standard errors); FVD is a set statistic and has none.

The paper's claims are checked against those intervals: a claim holds when the interval
is on its side of zero, does not hold when it is on the other side, and is inconclusive
when it contains zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from metrics.rollups import SHIFT_APPEARANCE, SHIFT_MOTION
from reports.run_info import timed_alone
from reports.sections import ReportInputs, SectionOutput, methods_of, section
from reports.tables import clean_aggregates, markdown_grid

AGG_COLUMNS = [  # (label, aggregate metric prefix, higher is better)
    ("Appearance", "rollup:shift_appearance[", True),
    ("Motion", "rollup:shift_motion[", True),
    ("Overall", "rollup:shift_overall[", True),
    ("Motion score", "motion_score[", True),
    ("Dynamic degree", "dynamic_degree[", True),
    ("FVD (tiny)", "fvd[", False),
]
PAIRED = ["Appearance", "Motion", "Overall", "Motion score"]  # columns with a per-video value
ABLATION_MARKS = ["IMR", "Noise align", "Adv. RM", "LMR"]  # Table 3's columns


TABLE3_ORDERINGS = [  # (claim, better row, worse row, column) of the paper's Table 3
    ("A0 (IMR only) has more VBench motion than A1 (+NA)", "A0", "A1", "Motion"),
    ("noise alignment protects appearance (A1 > A0)", "A1", "A0", "Appearance"),
    ("the adversarial RM improves appearance (A2 > A1)", "A2", "A1", "Appearance"),
    ("LMR raises motion (A3 > A1, motion score)", "A3", "A1", "Motion score"),
    ("the adversarial RM improves appearance with LMR too (A4 > A3)", "A4", "A3", "Appearance"),
]


def ablation_rows(method_configs: dict[str, dict[str, Any]]) -> dict[str, tuple[str, list[bool]]]:
    """Table 3's rows: every shift method whose preset section labels it as an ablation row (A0 ... A4),
    with its components read from its recorded settings, in label order."""
    rows = {}
    for m in methods_of("shift", method_configs):
        cfg = method_configs[m]
        label = str(cfg.get("label") or "")
        if label[:1] == "A" and label[1:2].isdigit():
            rewards = cfg.get("rewards") or []
            rows[m] = (label, ["imr" in rewards, bool(cfg.get("noise_alignment")), bool(cfg.get("adversarial")),
                               "lmr" in rewards])
    return dict(sorted(rows.items(), key=lambda kv: kv[1][0]))


def _final(agg: pd.DataFrame, method: str, prefix: str) -> float:
    rows = agg[(agg["method"] == method) & agg["metric"].str.startswith(prefix)]
    if rows.empty:
        return float("nan")
    return float(rows[rows["step"] == rows["step"].max()]["value"].mean())


def per_video(records: pd.DataFrame, method: str) -> pd.DataFrame:
    """Per-video appearance, motion, overall and motion score at the method's final checkpoint
    (base: step 0), averaged over seeds; index: video id."""
    rec = records[records["method"] == method]
    if rec.empty:
        return pd.DataFrame()
    rec = rec[rec["step"] == rec["step"].max()].copy()
    rec["name"] = rec["metric"].str.split("[").str[0]
    wide = rec.pivot_table(index="video_id", columns="name", values="value", aggfunc="mean")
    app = [c for c in SHIFT_APPEARANCE if c in wide]
    mot = [c for c in SHIFT_MOTION if c in wide]
    out = pd.DataFrame(index=wide.index)
    out["Appearance"] = wide[app].mean(axis=1) if app else np.nan
    out["Motion"] = wide[mot].mean(axis=1) if mot else np.nan
    out["Overall"] = wide[app + mot].mean(axis=1) if app + mot else np.nan
    out["Motion score"] = wide["motion_score"] if "motion_score" in wide else np.nan
    return out


def paired(a: pd.DataFrame, b: pd.DataFrame, column: str) -> tuple[float, float]:
    """Mean of a - b over shared videos and the half-width of its 95 % interval."""
    if a.empty or b.empty or column not in a or column not in b:
        return float("nan"), float("nan")
    diff = (a[column] - b[column]).dropna()
    if len(diff) < 2:
        return float("nan"), float("nan")
    return float(diff.mean()), float(1.96 * diff.std(ddof=1) / np.sqrt(len(diff)))


def _train_seconds(logs: pd.DataFrame | None, method: str) -> float:
    if logs is None or logs.empty:
        return float("nan")
    rows = logs[(logs["method"] == method) & (logs["key"] == "seconds")]
    if rows.empty:
        return float("nan")
    return float(rows[rows["step"] == rows["step"].max()]["value"].mean())


def shift_table(agg: pd.DataFrame, records: pd.DataFrame | None, method_configs: dict[str, dict[str, Any]],
                logs: pd.DataFrame | None = None) -> pd.DataFrame:
    methods = methods_of("shift", method_configs)
    if agg.empty or not methods:
        return pd.DataFrame()
    agg = clean_aggregates(agg)
    records = records if records is not None else pd.DataFrame(columns=["method", "step", "metric"])
    base = per_video(records, "base")
    sft_seconds = _train_seconds(logs, "sft")
    rows = []
    for method in ["base", *(["sft"] if "sft" in set(agg["method"]) else []), *methods]:
        if agg[agg["method"] == method].empty:
            continue
        row: dict[str, Any] = {"method": method,
                               "step": int(agg[agg["method"] == method]["step"].max()),
                               "seeds": int(agg[agg["method"] == method]["seed"].nunique())}
        row.update({label: _final(agg, method, prefix) for label, prefix, _ in AGG_COLUMNS})
        mine = per_video(records, method)
        for col in PAIRED:
            row[f"Δ {col}"], row[f"ci {col}"] = paired(mine, base, col) if method != "base" else (np.nan, np.nan)
        secs = _train_seconds(logs, method)
        row["train s"] = secs
        row["time vs SFT"] = secs / sft_seconds if np.isfinite(secs) and sft_seconds > 0 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _verdict(mean: float, half: float, claim_positive: bool) -> str:
    if not (np.isfinite(mean) and np.isfinite(half)):
        return "not measured"
    lo, hi = mean - half, mean + half
    if (lo > 0 and claim_positive) or (hi < 0 and not claim_positive):
        return "holds"
    if (hi < 0 and claim_positive) or (lo > 0 and not claim_positive):
        return "does not hold"
    return "inconclusive (interval contains 0)"


def shift_checks(records: pd.DataFrame | None, methods: list[str],
                 method_configs: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for the paper's claims this run can test, on paired intervals; Table 3's
    orderings name the ablation rows by their labels (A0 ... A4), whichever methods carry them."""
    if records is None or records.empty:
        return []
    row = {label.split()[0]: m for m, (label, _) in ablation_rows(method_configs or {}).items()}
    vids = {m: per_video(records, m) for m in ["base", "sft", *methods]}
    out: list[tuple[str, str, str]] = []

    def check(claim: str, a: str, b: str, col: str, positive: bool) -> None:
        if any(vids.get(m) is None or vids[m].empty for m in (a, b)):
            return
        mean, half = paired(vids[a], vids[b], col)
        out.append((claim, _verdict(mean, half, positive), f"{col} {a} − {b}: {mean:+.4f} ± {half:.4f}"))

    check("SFT loses motion (motion score)", "sft", "base", "Motion score", False)
    check("SFT loses VBench motion", "sft", "base", "Motion", False)
    check("SFT improves appearance", "sft", "base", "Appearance", True)
    if "shift" in vids and not vids["shift"].empty:
        mean, half = paired(vids["shift"], vids["base"], "Motion score")
        keeps = "not measured" if not np.isfinite(half) else (
            "does not hold" if mean + half < 0 else "holds (no significant loss)")
        out.append(("SHIFT keeps motion (motion score not below the base model)", keeps,
                    f"Motion score shift − base: {mean:+.4f} ± {half:.4f}"))
    check("SHIFT has more motion than SFT (motion score)", "shift", "sft", "Motion score", True)
    check("SHIFT has more VBench motion than SFT", "shift", "sft", "Motion", True)
    check("SHIFT beats SFT on VBench overall", "shift", "sft", "Overall", True)
    # Table 3's orderings among the ablation runs.
    for claim, a, b, col in TABLE3_ORDERINGS:
        if a in row and b in row:
            check(claim, row[a], row[b], col, True)
    return out


def _fmt(col: str, v: float) -> str:
    if not np.isfinite(v):
        return "–"
    if col.startswith("FVD"):
        return f"{v:.1f}"
    return f"{v:.2f}×" if col == "time vs SFT" else f"{v:.4f}"


def _with_ci(r: pd.Series, col: str) -> str:
    cell = _fmt(col, r[col])
    d = r.get(f"Δ {col}", np.nan)
    return cell if not np.isfinite(d) else f"{cell} ({d:+.4f} ± {r[f'ci {col}']:.4f})"


LABELS = {"base": "Base (step 0)", "sft": "SFT", "shift": "SHIFT"}


def shift_markdown(table: pd.DataFrame, checks: list[tuple[str, str, str]],
                   method_configs: dict[str, dict[str, Any]] | None = None) -> str:
    if table.empty:
        return ""
    cols = [c for c, _, _ in AGG_COLUMNS]
    head = ["Method", "step", "seeds", *[f"{c} {'↑' if up else '↓'}" for c, _, up in AGG_COLUMNS], "Training time ↓"]
    main = table[table["method"].isin(["base", "sft", "shift"])]

    def cells(rows: pd.DataFrame, label) -> list[list[str]]:
        return [[label(r), str(r["step"]), str(r["seeds"]), *[_with_ci(r, c) for c in cols],
                 _fmt("time vs SFT", r["time vs SFT"])] for _, r in rows.iterrows()]

    text = ("SHIFT in the layout of the paper's Table 1 (tiny world; final checkpoint, mean over seeds). In "
            "brackets: the per-video paired change from the base model ± its 95 % interval. Appearance = mean of "
            f"{', '.join(SHIFT_APPEARANCE[:2] + SHIFT_APPEARANCE[4:])} (the tiny world has no aesthetic or imaging "
            f"quality); Motion = mean of {', '.join(SHIFT_MOTION)}; Overall = mean of all seven. Training time: "
            "training seconds (without evaluation) relative to SFT's; none for a method trained beside another "
            "(harness run --jobs > 1), whose seconds are no cost.\n\n"
            + markdown_grid(head, cells(main, lambda r: LABELS.get(r["method"], r["method"]))))
    ablation = ablation_rows(method_configs or {})
    abl = table[table["method"].isin(ablation)]
    if len(abl) > 1:
        abl = abl.assign(order=[list(ablation).index(m) for m in abl["method"]]).sort_values("order")
        rows = [[ablation[r["method"]][0], *["✓" if f else "" for f in ablation[r["method"]][1]],
                 *[_with_ci(r, c) for c in cols]] for _, r in abl.iterrows()]
        text += ("\n\nAblation in the layout of Table 3 (same columns and intervals):\n\n"
                 + markdown_grid(["", *ABLATION_MARKS, *head[3:-1]], rows))
    if checks:
        text += "\n\nThe paper's claims on this run:\n\n" + markdown_grid(
            ["claim", "on the tiny world", "evidence (paired, 95 %)"], [list(c) for c in checks])
    return text


@section("shift", "SHIFT (Tables 1 and 3 layout)")
def shift_section(run: ReportInputs) -> SectionOutput | None:
    """``shift.md`` when the run has methods of the shift trainer."""
    methods = methods_of("shift", run.info.method_configs)
    records = run.records if methods else None
    table = shift_table(run.agg, records, run.info.method_configs, timed_alone(run.logs, run.info.concurrent_sessions))
    configs = run.info.method_configs
    text = shift_markdown(table, shift_checks(records, methods, configs), configs)
    return SectionOutput(text) if text else None
