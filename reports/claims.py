"""The papers' headline claims, each checked on the run's numbers with a verdict.

A claim names the methods it needs and a test. Differences between two checkpoints are paired per
eval video (every checkpoint samples the same conditions with the same noise) and averaged over the
training seeds; the base model (step 0) is shared by every seed. Its 95 % interval combines the two
sources of noise:

    se^2 = var_v(d_v) / n_videos  +  var_s(m_s) / n_seeds

where d_v is video v's difference averaged over seeds and m_s seed s's mean difference (the second
term needs two seeds or more). A claim *holds* when the interval lies on the claimed side of zero,
*does not hold* when it lies on the other side, and is *inconclusive* otherwise; a claim whose
methods are not in the run is listed as *not measured*, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from metrics.judges import MARK, metric_judges
from reports.tables import markdown_grid

HOLDS, FAILS, UNSURE, ABSENT = "holds", "does not hold", "inconclusive", "not measured"
LD = "probe/likelihood_displacement/"
GAMMA = "own_pairs/gamma"  # the paper's measurement: Eq. 10 on each training step's own pairs


@dataclass
class RunData:
    records: pd.DataFrame  # per-video values: method, seed, step, metric, video_id, value
    logs: pd.DataFrame  # train logs: method, seed, step, key, value

    def methods(self) -> set[str]:
        return set(self.records["method"]) if not self.records.empty else set()


@dataclass
class Finding:
    evidence: str
    verdict: str


@dataclass(frozen=True)
class Claim:
    paper: str
    text: str
    methods: tuple[str, ...]
    test: Callable[[RunData], Finding]
    metric: str | None = None  # the metric (by name) the claim compares methods on, when it is one


def _final_values(data: RunData, method: str, metric: str) -> pd.DataFrame:
    """video x seed values of ``metric`` (by name) at the method's final step, seeds that reached it."""
    rec = data.records
    rec = rec[(rec["method"] == method) & (rec["metric"].str.split("[").str[0] == metric)]
    if rec.empty:
        return pd.DataFrame()
    final = rec.groupby("seed")["step"].max()
    rec = rec[rec["step"] == rec["seed"].map(final)]
    rec = rec[rec["step"] == rec["step"].max()]
    return rec.pivot_table(index="video_id", columns="seed", values="value", aggfunc="mean")


def paired_delta(data: RunData, metric: str, a: str, b: str) -> tuple[float, float, int, int]:
    """(mean of a - b, half-width of its 95 % interval, seeds, videos); see the module docstring."""
    va, vb = _final_values(data, a, metric), _final_values(data, b, metric)
    if va.empty or vb.empty:
        return float("nan"), float("nan"), 0, 0
    if vb.shape[1] == 1 and va.shape[1] > 1:  # the shared base model: one column for every seed
        vb = pd.DataFrame({s: vb.iloc[:, 0] for s in va.columns})
    elif va.shape[1] == 1 and vb.shape[1] > 1:
        va = pd.DataFrame({s: va.iloc[:, 0] for s in vb.columns})
    seeds = [s for s in va.columns if s in vb.columns]
    d = (va[seeds] - vb[seeds]).dropna()
    if d.empty or len(d) < 2:
        return float("nan"), float("nan"), len(seeds), len(d)
    per_video, per_seed = d.mean(axis=1), d.mean(axis=0)
    var = per_video.var(ddof=1) / len(d) + (per_seed.var(ddof=1) / len(seeds) if len(seeds) > 1 else 0.0)
    return float(per_video.mean()), float(1.96 * np.sqrt(var)), len(seeds), len(d)


def verdict(mean: float, half: float, positive: bool) -> str:
    if not (np.isfinite(mean) and np.isfinite(half)):
        return ABSENT
    lo, hi = mean - half, mean + half
    if (lo > 0) if positive else (hi < 0):
        return HOLDS
    if (hi < 0) if positive else (lo > 0):
        return FAILS
    return UNSURE


def _difference(metric: str, a: str, b: str, positive: bool, label: str | None = None):
    def test(data: RunData) -> Finding:
        mean, half, k, n = paired_delta(data, metric, a, b)
        ev = f"{label or metric} {a} − {b}: {mean:+.4f} ± {half:.4f} ({k} seeds × {n} videos)"
        return Finding(ev, verdict(mean, half, positive))
    return test


def _seed_interval(values: list[float]) -> tuple[float, float]:
    """Mean and t-interval half-width over seeds (nan half-width with one seed)."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return float(v.mean()) if len(v) else float("nan"), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def _final_log(data: RunData, method: str, key: str) -> list[float]:
    logs = data.logs
    rows = logs[(logs["method"] == method) & (logs["key"] == key)] if not logs.empty else logs
    if rows.empty:
        return []
    return [float(p.sort_values("step")["value"].iloc[-1]) for _, p in rows.groupby("seed")]


def _displacement(method: str, positive: bool):
    def test(data: RunData) -> Finding:
        vals = _final_log(data, method, LD + "chosen_displacement")
        mean, half = _seed_interval(vals)
        if len(vals) == 1:
            return Finding(f"chosen Δlog p at the final step: {mean:+.2e} (one seed: no interval)", UNSURE)
        return Finding(f"chosen Δlog p at the final step, {method}: {mean:+.2e} ± {half:.1e} ({len(vals)} seeds)",
                       verdict(mean, half, positive))
    return test


def _gamma_positive(method: str):
    def test(data: RunData) -> Finding:
        logs = data.logs
        g = logs[(logs["method"] == method) & (logs["key"] == GAMMA)]["value"] if not logs.empty else []
        n = len(g)
        if not n:
            return Finding("no own-pairs Gamma logged (own_pairs/gamma)", ABSENT)
        pos = int((np.asarray(g) > 0).sum())
        lo, hi = stats.binomtest(pos, n).proportion_ci(0.95, method="wilson")
        v = HOLDS if lo > 0.5 else FAILS if hi < 0.5 else UNSURE
        return Finding(f"own-pairs Gamma > 0 in {pos} of {n} measured training steps ({pos / n:.0%}; "
                       f"95 % Wilson [{lo:.2f}, {hi:.2f}])", v)
    return test


def _time_ratio(paper_ratio: float, tolerance: float = 0.2):
    """Seconds per training step, shift over sft, each the minimum over seeds.

    Wall time only grows when something else shares the machine (another job, a paused and resumed
    run), so the fastest seed is the best estimate of a method's cost, as in ``timeit``; a mean over
    seeds would carry whatever else ran beside the run into the verdict.
    """
    def test(data: RunData) -> Finding:
        def per_step(method: str) -> dict[int, float]:
            logs = data.logs
            rows = logs[(logs["method"] == method) & (logs["key"] == "seconds")] if not logs.empty else logs
            return {int(s): float(p.sort_values("step")["value"].iloc[-1] / p["step"].max())
                    for s, p in rows.groupby("seed")} if len(rows) else {}
        shift, sft = per_step("shift"), per_step("sft")
        if not shift or not sft:
            return Finding("no training times logged", ABSENT)
        ratio = min(shift.values()) / min(sft.values())
        limit = paper_ratio * (1 + tolerance)
        spread = (f"; per seed shift {min(shift.values()):.2f}-{max(shift.values()):.2f} s, "
                  f"sft {min(sft.values()):.2f}-{max(sft.values()):.2f} s" if len(shift) + len(sft) > 2 else "")
        ev = (f"seconds per step shift / sft: {ratio:.2f} (fastest of {len(shift)} and {len(sft)} seeds{spread}; "
              f"the claim holds up to {limit:.2f}, the paper's {paper_ratio}× + {tolerance:.0%})")
        return Finding(ev, HOLDS if ratio <= limit else FAILS)
    return test


CLAIMS: list[Claim] = [
    Claim("SHIFT", "SFT on appearance-only data loses dynamic degree", ("sft",),
          _difference("dynamic_degree", "sft", "base", positive=False), metric="dynamic_degree"),
    Claim("SHIFT", "SFT lowers the motion score", ("sft",),
          _difference("motion_score", "sft", "base", positive=False), metric="motion_score"),
    Claim("SHIFT", "SHIFT keeps more dynamic degree than SFT", ("sft", "shift"),
          _difference("dynamic_degree", "shift", "sft", positive=True), metric="dynamic_degree"),
    Claim("SHIFT", "SHIFT keeps a higher motion score than SFT", ("sft", "shift"),
          _difference("motion_score", "shift", "sft", positive=True), metric="motion_score"),
    Claim("SHIFT", "SHIFT trains at about 2.46× SFT's cost per epoch (no more than +20 %)", ("sft", "shift"),
          _time_ratio(2.46)),
    Claim("PG-DPO", "DPO displaces the chosen likelihood (log p of chosen samples falls)", ("dpo",),
          _displacement("dpo", positive=False)),
    Claim("PG-DPO", "PG-DPO raises the chosen likelihood", ("pgdpo",), _displacement("pgdpo", positive=True)),
    # Eq. 10 measures PG-DPO's step against a DPO step from the same weights on the step's own training pairs
    # (own_pairs/gamma, as the paper does; not the held-out probe); on a DPO run it is 0 by definition.
    Claim("PG-DPO", "Gamma > 0 in most training steps of PG-DPO (paper: 81.7 % and 76.9 %)", ("pgdpo",),
          _gamma_positive("pgdpo")),
    Claim("PG-DPO", "PG-DPO improves motion adherence over DPO", ("dpo", "pgdpo"),
          _difference("motion_adherence", "pgdpo", "dpo", positive=True), metric="motion_adherence"),
    Claim("Diffusion-APO", "APO lowers the distortion rate vs DPO at matched compute", ("dpo", "apo"),
          _difference("distortion_rate", "apo", "dpo", positive=False), metric="distortion_rate"),
    Claim("FCRM", "FCRM raises the latent reward over the base model", ("fcrm",),
          _difference("latent_reward", "fcrm", "base", positive=True), metric="latent_reward"),
    Claim("FCRM", "hybrid EMA + offline collection beats fully on-policy", ("fcrm", "fcrm-onpolicy"),
          _difference("latent_reward", "fcrm", "fcrm-onpolicy", positive=True), metric="latent_reward"),
    Claim("FCRM", "hybrid EMA + offline collection beats fully offline", ("fcrm", "fcrm-offline"),
          _difference("latent_reward", "fcrm", "fcrm-offline", positive=True), metric="latent_reward"),
    Claim("FCRM", "fully on-policy beats fully offline", ("fcrm-onpolicy", "fcrm-offline"),
          _difference("latent_reward", "fcrm-onpolicy", "fcrm-offline", positive=True), metric="latent_reward"),
]


def claim_overlap(claim: Claim, signals: Mapping[str, Iterable[str]] | None) -> str:
    """Which of the claim's methods trained on the judge of the metric it is decided on ('' none)."""
    if not claim.metric or not signals:
        return ""
    judges = metric_judges(claim.metric)
    hits = [f"{m} trained on {', '.join(sorted(judges & set(signals.get(m, []))))}"
            for m in claim.methods if judges & set(signals.get(m, []))]
    return "; ".join(hits)


def check_claims(data: RunData, claims: list[Claim] | None = None,
                 signals: Mapping[str, Iterable[str]] | None = None) -> pd.DataFrame:
    """One row per claim; ``signals`` (each method's training judges) fills the ``overlap`` column: the
    claim is decided on a metric whose judge one of its methods trained on."""
    rows = []
    have = data.methods()
    for claim in claims or CLAIMS:
        missing = [m for m in (*claim.methods, "base") if m not in have]
        if missing:
            finding = Finding(f"needs method(s) {', '.join(missing)} in the run", ABSENT)
        else:
            finding = claim.test(data)
        rows.append({"paper": claim.paper, "claim": claim.text, "evidence": finding.evidence,
                     "verdict": finding.verdict, "overlap": claim_overlap(claim, signals)})
    return pd.DataFrame(rows, columns=["paper", "claim", "evidence", "verdict", "overlap"])


def claims_markdown(table: pd.DataFrame, preset: str) -> str:
    if table.empty or (table["verdict"] == ABSENT).all():
        return ""
    counts = table["verdict"].value_counts()
    head = (f"Headline claims of the four papers, checked on this run ({preset} preset). Differences are paired "
            "per eval video at each method's final checkpoint, averaged over seeds, with 95 % intervals that "
            "combine video and seed noise (reports/claims.py). "
            + ", ".join(f"{counts.get(v, 0)} {v}" for v in (HOLDS, FAILS, UNSURE, ABSENT)) + ".\n\n")
    marked = "overlap" in table and table["overlap"].astype(bool).any()
    cells = [[r.paper, r.claim, r.evidence + (f" {MARK}" if getattr(r, "overlap", "") else ""), f"**{r.verdict}**"]
             for r in table.itertuples()]
    foot = ""
    if marked:
        foot = (f"\n{MARK} decided on a metric whose judge a compared method trained on, so it reads that method's "
                "own training signal, not a held-out judge: "
                + "; ".join(f"{r.claim}: {r.overlap}" for r in table.itertuples() if r.overlap) + ".\n")
    return head + markdown_grid(["paper", "claim", "evidence", "verdict"], cells) + foot
