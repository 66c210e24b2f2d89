"""Reward-hacking diagnostics for every method of a run (SHIFT paper, App. B and Fig. 5).

Per method and checkpoint:

* the motion-minus-appearance gap (``rollup:shift_motion_minus_appearance``) and its change
  from the start: SHIFT reads a gap that peaks and then collapses, or turns negative, as
  hacking;
* FVD drift: FVD relative to the run's starting model (+44 % at beta = 1 in the paper);
* the method's own training reward (what it optimized, as logged: SHIFT's buffer reward under
  its discriminators, FCRM's rollout reward) next to held-out judges that did not train it
  (motion score, distortion rate, the frozen pre-trained IMR/LMR rewards);
* the SFT-term over advantage-term gradient-norm ratio of hybrid objectives (mean over the
  steps since the previous checkpoint);
* the gain on the training judge against the gain on a held-out judge: the change from the base
  model of the first metric whose judge the method trained on (``train judge``, e.g. latent_reward
  for FCRM and the preference methods, imr_reward for SHIFT; metrics.judges) next to the change of
  the evaluation oracle's motion adherence and distortion rate, which no default method trains on.

``signals`` lists, at the final checkpoint, each pattern the paper calls hacking that the
numbers show; an empty list means none was seen, not that none happened.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from reports.sections import ReportInputs, SectionOutput, section
from reports.tables import clean_aggregates, full_set_only, markdown_grid

TRAIN_REWARD_KEYS = ("reward/fake_mean", "reward/round_mean")  # shift, fcrm
FVD_DRIFT_LIMIT = 0.20  # +20 % FVD over the start: the paper's beta = 10 run (+24 %) already counts as drift


def _agg_series(agg: pd.DataFrame, method: str, prefix: str) -> pd.Series:
    rows = agg[(agg["method"] == method) & agg["metric"].str.startswith(prefix)]
    return rows.groupby("step")["value"].mean()


def _fvd_drift(agg: pd.DataFrame, method: str) -> pd.Series:
    """FVD at each step over the start's FVD *of the same identity*: FVD is biased by the number of
    generated videos (in its identity, ``gen=``), so a 48-video FVD is never divided by a 192-video one;
    steps without a same-identity start get no drift."""
    rows = agg[(agg["method"] == method) & agg["metric"].str.startswith("fvd[")]
    base = agg[(agg["method"] == "base") & agg["metric"].str.startswith("fvd[")]
    out = {}
    for metric, part in rows.groupby("metric"):
        series = part.groupby("step")["value"].mean()
        start = series.get(0, base[base["metric"] == metric]["value"].mean() if not base.empty else np.nan)
        for step, value in series.items():
            out.setdefault(step, []).append(value / start - 1 if np.isfinite(start) else np.nan)
    return pd.Series({s: float(np.nanmean(v)) if np.isfinite(v).any() else np.nan for s, v in out.items()},
                     dtype=float)


def _logged_at(logs: pd.DataFrame, method: str, key: str, steps: list[int], how: str = "last") -> dict[int, float]:
    rows = logs[(logs["method"] == method) & (logs["key"] == key)] if not logs.empty else logs
    out = {}
    prev = 0
    for s in steps:
        window = rows[(rows["step"] > prev) & (rows["step"] <= s)] if not rows.empty else rows
        if not window.empty:
            out[s] = float(window["value"].iloc[-1] if how == "last" else window["value"].mean())
        prev = s
    return out


JUDGE_ORDER = ("latent_reward", "imr_reward", "lmr_reward", "aesthetic_quality", "luminance", "motion_adherence",
               "distortion_rate")
HELD_OUT = ("motion_adherence", "distortion_rate")  # the evaluation oracle's verdicts


def _training_judge(method: str, overlap: Mapping[str, Mapping[str, object]] | None) -> str | None:
    """The metric (by name) that reads the judge the method trained on, in JUDGE_ORDER's preference."""
    names = {i.split("[", 1)[0] for i in (overlap or {}).get(method, {})}
    return next((n for n in JUDGE_ORDER if n in names), None)


def hacking_table(agg: pd.DataFrame, logs: pd.DataFrame | None, methods: list[str],
                  overlap: Mapping[str, Mapping[str, object]] | None = None) -> pd.DataFrame:
    """``overlap`` (metrics.judges.overlaps): which metrics read each method's training judges. Checkpoints
    evaluated on a smaller intermediate eval set are left out (``full_set_only``): the diagnostics compare steps,
    and a subset's sampling noise must not read as a peak or a fall."""
    if agg.empty:
        return pd.DataFrame()
    agg = clean_aggregates(full_set_only(agg))
    logs = logs if logs is not None else pd.DataFrame(columns=["method", "key", "step", "value"])
    base_gap = _agg_series(agg, "base", "rollup:shift_motion_minus_appearance")
    rows = []
    for method in methods:
        gap = _agg_series(agg, method, "rollup:shift_motion_minus_appearance")
        fvd = _agg_series(agg, method, "fvd[")
        if gap.empty and fvd.empty:
            continue
        steps = sorted(set(gap.index) | set(fvd.index))
        drift = _fvd_drift(agg, method)
        start_gap = gap.get(0, base_gap.get(0, np.nan))
        key = next((k for k in TRAIN_REWARD_KEYS if not logs.empty and
                    ((logs["method"] == method) & (logs["key"] == k)).any()), None)
        train_r = _logged_at(logs, method, key, steps) if key else {}
        ratio = _logged_at(logs, method, "grad_norm/sft_over_awr", steps, how="mean")
        held = {name: _agg_series(agg, method, f"{name}[") for name in
                ("motion_score", "distortion_rate", "imr_reward", "lmr_reward")}
        judge = _training_judge(method, overlap)
        judge_series = _agg_series(agg, method, f"{judge}[") if judge else pd.Series(dtype=float)
        judge_start = _agg_series(agg, "base", f"{judge}[").get(0, np.nan) if judge else np.nan
        oracle = {name: (_agg_series(agg, method, f"{name}["), _agg_series(agg, "base", f"{name}[").get(0, np.nan))
                  for name in HELD_OUT if name != judge}
        for s in steps:
            rows.append({
                "train judge": judge or "–", "train judge Δ": judge_series.get(s, np.nan) - judge_start,
                **{f"held-out {name} Δ": series.get(s, np.nan) - start for name, (series, start) in oracle.items()},
                "method": method, "step": s, "gap": gap.get(s, np.nan), "gap change": gap.get(s, np.nan) - start_gap,
                "FVD": fvd.get(s, np.nan), "FVD drift": drift.get(s, np.nan),
                "train reward": train_r.get(s, np.nan), **{k: v.get(s, np.nan) for k, v in held.items()},
                "sft/awr grad": ratio.get(s, np.nan)})
    return pd.DataFrame(rows)


def hacking_signals(table: pd.DataFrame) -> dict[str, list[str]]:
    """Per method, the hacking patterns visible at its final checkpoint."""
    out: dict[str, list[str]] = {}
    for method, rows in table.groupby("method", sort=False):
        rows = rows.sort_values("step")
        last, first = rows.iloc[-1], rows.iloc[0]
        signs = []
        if np.isfinite(last["FVD drift"]) and last["FVD drift"] > FVD_DRIFT_LIMIT:
            signs.append(f"FVD drift {100 * last['FVD drift']:+.0f}% over the start")
        if np.isfinite(last["gap"]) and last["gap"] < 0 <= rows["gap"].max():
            signs.append("motion-minus-appearance gap turned negative")
        peak = rows["gap"].max()
        if len(rows) > 2 and np.isfinite(peak) and rows["gap"].idxmax() != rows.index[-1] and \
                last["gap"] < peak - 0.5 * abs(peak - first["gap"]) and peak > first["gap"]:
            signs.append("gap peaked then fell back")
        trained = rows["train reward"].dropna()
        if len(trained) >= 2 and trained.iloc[-1] > trained.iloc[0]:
            for name, worse_if_up in (("motion_score", False), ("distortion_rate", True), ("imr_reward", False)):
                a, b = first[name], last[name]
                if np.isfinite(a) and np.isfinite(b) and ((b > a) == worse_if_up) and abs(b - a) > 0.05 * abs(a):
                    signs.append(f"training reward rose while held-out {name} got worse ({a:.3f} -> {b:.3f})")
        gain = last.get("train judge Δ", np.nan)
        if np.isfinite(gain) and gain > 0:
            for name, worse_if_up in (("motion_adherence", False), ("distortion_rate", True)):
                d = last.get(f"held-out {name} Δ", np.nan)
                if np.isfinite(d) and ((d > 0) == worse_if_up) and d != 0:
                    signs.append(f"its training judge {last['train judge']} rose ({gain:+.4f} over the base model) "
                                 f"while the held-out oracle's {name} got worse ({d:+.4f})")
        out[str(method)] = signs
    return out


def hacking_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    cols = ["gap", "gap change", "FVD", "FVD drift", "train reward", "motion_score", "distortion_rate",
            "imr_reward", "lmr_reward", "sft/awr grad", "train judge", "train judge Δ",
            *(f"held-out {n} Δ" for n in HELD_OUT)]
    cols = [c for c in cols if c in table.columns]

    def fmt(c: str, v: object) -> str:
        if isinstance(v, str):
            return v
        if not np.isfinite(v):
            return "–"
        if c == "FVD drift":
            return f"{100 * v:+.1f}%"
        if c == "distortion_rate":
            return f"{100 * v:.1f}%"
        return f"{v:.1f}" if c == "FVD" else f"{v:.3g}" if c == "sft/awr grad" else f"{v:+.4f}" \
            if c == "gap change" or c.endswith("Δ") else f"{v:.4f}"

    cells = [[r["method"], str(r["step"]), *[fmt(c, r[c]) for c in cols]] for _, r in table.iterrows()]
    signals = hacking_signals(table)
    lines = [f"- **{m}**: " + ("; ".join(s) if s else "no hacking pattern seen") for m, s in signals.items()]
    return ("Reward-hacking diagnostics (every method, every checkpoint). gap: VBench motion minus appearance "
            "(raw scores); FVD drift: relative to the run's starting model; train reward: what the method "
            "optimized, as logged (SHIFT: its buffer's reward under the moving discriminators; FCRM: its rollout "
            "reward); motion score, distortion rate and the frozen pre-trained IMR/LMR rewards are held out "
            "(except for a method trained on one of them); sft/awr grad: the SFT term's gradient norm over the "
            "advantage term's; train judge Δ: the change over the base model of the metric that reads the judge "
            "the method trained on, next to the held-out oracle's changes (a training judge that rises while the "
            "oracle gets worse is being hacked).\n\n"
            + markdown_grid(["method", "step", *cols], cells) + "\n\nAt the final checkpoint:\n\n" + "\n".join(lines))


@section("hacking", "Reward-hacking diagnostics")
def hacking_section(run: ReportInputs) -> SectionOutput | None:
    text = hacking_markdown(hacking_table(run.agg, run.logs, run.info.methods, run.overlap))
    return SectionOutput(text) if text else None
