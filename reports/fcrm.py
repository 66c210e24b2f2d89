"""FCRM's ablation in the layout of its Table 3, and the paper's orderings checked on the run.

Rows: the base model(s) at step 0, then every run of the fcrm trainer (the default and its
named variants) at its final checkpoint, mean over seeds. Columns: the latent reward (the
paper's "Latent Reward"), the tiny VBench-I2V average, then the held-out tiny-world judges
(distortion rate, motion adherence, FVD) and luminance. The paper's image-preference columns
(HPSv2.1, Aesthetic, PickScore) have no tiny-world counterpart and are left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from reports.sections import ReportInputs, SectionOutput, methods_of, section
from reports.tables import clean_aggregates, markdown_grid

COLUMNS = [  # (label, metric name prefix, higher is better)
    ("Latent Reward", "latent_reward[", True),
    ("VBench-I2V avg, partial (tiny)", "rollup:vbench_i2v_partial_total", True),
    ("distortion rate", "distortion_rate[", False),
    ("motion adherence", "motion_adherence[", True),
    ("FVD (tiny)", "fvd[", False),
    ("luminance", "luminance", True),
]



def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def variant_label(method: str, method_configs: dict[str, dict[str, Any]]) -> str:
    """The method's label from its preset section (the paper's name of a variant, recorded with the run);
    otherwise the method's name with the settings in which it differs from the run's default ``fcrm``
    section, as ``key=value`` (nested keys dotted)."""
    if method_configs.get(method, {}).get("label"):
        return str(method_configs[method]["label"])
    mine, default = _flat(method_configs.get(method, {})), _flat(method_configs.get("fcrm", {}))
    diff = [f"{k}={v}" for k, v in mine.items() if k not in ("trainer", "label") and default.get(k, object()) != v]
    return f"{method} ({', '.join(diff)})" if diff and method != "fcrm" else method


def _value(agg: pd.DataFrame, method: str, step: int | None, prefix: str) -> float:
    rows = agg[(agg["method"] == method) & agg["metric"].str.startswith(prefix)]
    if rows.empty:
        return float("nan")
    step = int(rows["step"].max()) if step is None else step
    rows = rows[rows["step"] == step]
    return float(rows["value"].mean()) if not rows.empty else float("nan")


def _training_reward(logs: pd.DataFrame | None, method: str) -> float:
    """Mean reward of the method's last rollout round (its own reward; none when fully offline)."""
    if logs is None or logs.empty:
        return float("nan")
    rows = logs[(logs["method"] == method) & (logs["key"] == "reward/round_mean")]
    if rows.empty:
        return float("nan")
    return float(rows[rows["step"] == rows["step"].max()]["value"].mean())


def paired_change(records: pd.DataFrame | None, method: str, start: str) -> tuple[float, float]:
    """Mean and standard error of the per-video change of the latent reward from ``start``'s
    step 0 to ``method``'s final checkpoint: the same eval conditions and seeds, so paired."""
    if records is None or records.empty:
        return float("nan"), float("nan")
    rec = records[records["metric"].str.startswith("latent_reward[")]
    end = rec[rec["method"] == method]
    begin = rec[(rec["method"] == start) & (rec["step"] == 0)]
    if end.empty or begin.empty:
        return float("nan"), float("nan")
    end = end[end["step"] == end["step"].max()].groupby("video_id")["value"].mean()
    diff = (end - begin.groupby("video_id")["value"].mean()).dropna()
    if len(diff) < 2:
        return float("nan"), float("nan")
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def fcrm_table(agg: pd.DataFrame, method_configs: dict[str, dict[str, Any]],
               logs: pd.DataFrame | None = None, records: pd.DataFrame | None = None) -> pd.DataFrame:
    methods = methods_of("fcrm", method_configs)
    if agg.empty or not methods:
        return pd.DataFrame()
    agg = clean_aggregates(agg)
    rows: list[dict[str, Any]] = []
    starts = [("base", "base", 0, "Base model (step 0)")]
    starts += [(m, m, 0, f"{variant_label(m, method_configs)}: its base (step 0)") for m in methods
               if not agg[(agg["method"] == m) & (agg["step"] == 0)].empty]
    finals = [(m, m, None, variant_label(m, method_configs)) for m in methods if not agg[agg["method"] == m].empty]
    for key, method, step, label in starts + finals:
        at = agg[agg["method"] == method]
        row = {"row": key if step is None else f"{key}@0", "configuration": label,
               "step": int(at["step"].max()) if step is None else 0,
               "seeds": int(at["seed"].nunique()) if step is None else 1}
        row.update({col: _value(agg, method, step, prefix) for col, prefix, _ in COLUMNS})
        cfg = method_configs.get(method, {})
        row["training reward"] = (cfg.get("reward") or {}).get("name", "latent_rm") if step is None else ""
        row["last-round reward"] = _training_reward(logs, method) if step is None else float("nan")
        own_start = not agg[(agg["method"] == method) & (agg["step"] == 0)].empty
        row["delta"], row["delta_se"] = (paired_change(records, method, method if own_start else "base")
                                         if step is None else (float("nan"), float("nan")))
        rows.append(row)
    return pd.DataFrame(rows)


# The paper's Table 3 rows, by the labels the preset's fcrm sections carry (harness/presets/tiny.yaml).
DEFAULT = "FCRM (default: EMA + offline)"
RAW_REWARD, PIXEL = "Reward target: raw reward", "Reward space: pixel (oracle)"
ON_POLICY, OFFLINE = "Data: fully on-policy", "Data: fully offline"
REPLAY = {"pos": "Replay: positive-only", "all": "Replay: unfiltered", "neg": "Replay: negative-only"}
FEWSTEP, KL1, LUMINANCE = "Generator: few-step (3 NFE)", "KL penalty 1", "Luminance reward (offline)"


def fcrm_checks(table: pd.DataFrame, logs: pd.DataFrame | None = None) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for the paper's orderings that this run can test; its rows are found by
    their labels (a method's start by its label + "@0"), so a check whose rows did not run is left out."""
    if table.empty:
        return []
    val = {}
    for _, r in table.iterrows():
        start = str(r["row"]).endswith("@0") and r["row"] != "base@0"
        label = str(r["configuration"]).removesuffix(": its base (step 0)") + ("@0" if start else "")
        val[r["row"] if r["row"] == "base@0" else label] = r
    out: list[tuple[str, str, str]] = []

    def lr(key: str, col: str = "Latent Reward") -> float:
        return float(val[key][col]) if key in val else float("nan")

    def se(key: str) -> float:
        return float(val[key]["delta_se"]) if key in val and not key.endswith("@0") else 0.0

    def check(claim: str, keys: list[str], holds: bool, evidence: str) -> None:
        if not (all(k in val for k in keys) and all(np.isfinite(lr(k)) for k in keys)):
            return
        # Two runs' latent rewards differ by noise of about sqrt(se_a^2 + se_b^2) (paired per video
        # against the shared start); a gap under twice that is not evidence either way.
        noise = float(np.sqrt(sum(se(k) ** 2 for k in keys)))
        gap = max(abs(lr(a) - lr(b)) for a in keys for b in keys)
        verdict = "holds" if holds else "does not hold"
        if np.isfinite(noise) and noise > 0 and gap < 2 * noise:
            verdict += " (within noise)"
        out.append((claim, verdict, evidence + (f"; noise ±{noise:.3f}" if np.isfinite(noise) and noise else "")))

    d = DEFAULT
    check("FCRM raises the latent reward over the base model", [d, "base@0"],
          lr(d) > lr("base@0"), f"{lr('base@0'):.3f} -> {lr(d):.3f}")
    check("the normalised advantage beats the raw reward as target", [d, RAW_REWARD],
          lr(d) > lr(RAW_REWARD), f"{lr(d):.3f} vs {lr(RAW_REWARD):.3f}")
    check("the latent reward beats the pixel-space reward (on the latent reward)", [d, PIXEL],
          lr(d) > lr(PIXEL), f"{lr(d):.3f} vs {lr(PIXEL):.3f}")
    check("hybrid EMA + offline beats fully on-policy", [d, ON_POLICY],
          lr(d) > lr(ON_POLICY), f"{lr(d):.3f} vs {lr(ON_POLICY):.3f}")
    check("hybrid EMA + offline beats fully offline", [d, OFFLINE],
          lr(d) > lr(OFFLINE), f"{lr(d):.3f} vs {lr(OFFLINE):.3f}")
    replay = list(REPLAY.values())
    check("negative-only replay is the worst replay variant", replay,
          lr(REPLAY["neg"]) < min(lr(REPLAY["pos"]), lr(REPLAY["all"])),
          ", ".join(f"{k} {lr(v):.3f}" for k, v in REPLAY.items()))
    check("FCRM improves the few-step generator's latent reward", [FEWSTEP, f"{FEWSTEP}@0"],
          lr(FEWSTEP) > lr(f"{FEWSTEP}@0"), f"{lr(f'{FEWSTEP}@0'):.3f} -> {lr(FEWSTEP):.3f}")
    check("a KL penalty of 1 holds the latent reward back", [d, KL1],
          lr(KL1) < lr(d), f"{lr(d):.3f} without, {lr(KL1):.3f} with")
    if LUMINANCE in val and "base@0" in val:
        a, b = lr("base@0", "luminance"), lr(LUMINANCE, "luminance")
        d0, d1 = lr("base@0", "distortion rate"), lr(LUMINANCE, "distortion rate")
        out.append(("the luminance reward rises under fully offline FCRM", "holds" if b > a else "does not hold",
                    f"luminance {a:.4f} -> {b:.4f}; distortion rate {100 * d0:.1f}% -> {100 * d1:.1f}%"))
    return out


def _fmt(col: str, v: float) -> str:
    if not np.isfinite(v):
        return "–"
    if col == "distortion rate":
        return f"{100 * v:.1f}%"
    return f"{v:.1f}" if col.startswith("FVD") else f"{v:.4f}" if col == "luminance" else f"{v:.3f}"


def fcrm_markdown(table: pd.DataFrame, checks: list[tuple[str, str, str]]) -> str:
    if table.empty:
        return ""
    head = ["Configuration", "step", "seeds", *[f"{c} {'↑' if up else '↓'}" for c, _, up in COLUMNS],
            "Δ latent reward (paired ± se)", "trained on", "its last-round reward"]

    def delta(r: pd.Series) -> str:
        return "–" if not np.isfinite(r["delta"]) else f"{r['delta']:+.3f} ± {r['delta_se']:.3f}"

    cells = [[r["configuration"], str(r["step"]), str(r["seeds"]), *[_fmt(c, r[c]) for c, _, _ in COLUMNS],
              delta(r), r["training reward"], _fmt("", r["last-round reward"])] for _, r in table.iterrows()]
    text = ("FCRM ablation in the layout of the paper's Table 3 (tiny world; final checkpoint, mean over "
            "seeds). Δ latent reward: the per-video change from the run's starting model over the same eval "
            "conditions and seeds, with its standard error. The pixel-space variant trains on the oracle judge "
            "that distortion rate and motion adherence also read, so those two columns are not held out for "
            "it.\n\n" + markdown_grid(head, cells))
    if checks:
        text += "\n\nThe paper's orderings on this run:\n\n" + markdown_grid(
            ["claim", "on the tiny world", "evidence"], [list(c) for c in checks])
    return text


@section("fcrm", "FCRM ablation (Table 3 layout)")
def fcrm_section(run: ReportInputs) -> SectionOutput | None:
    """``fcrm.md`` when the run has methods of the fcrm trainer."""
    rec = run.records
    # the latent-reward records, in the order the store returns them metric by metric
    rewards = (rec[rec["metric"].str.startswith("latent_reward[")].sort_values("metric", kind="stable")
               if not rec.empty else rec)
    table = fcrm_table(run.agg, run.info.method_configs, run.logs, rewards)
    text = fcrm_markdown(table, fcrm_checks(table))
    return SectionOutput(text) if text else None
