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

The claims are data declared by each method's module (``Trainer.claims``, trainers/claims.py) and
collected here from the trainer registry, built-in methods in ``trainers.registry.BUILTIN_MODULES``
order; each is evaluated by its ``kind`` (``KINDS``). After them comes one row per trainer that
declares a training objective: "<method> improves its own training objective" (reports/objectives.py).

FCRM's and SHIFT's own checks (``fcrm_checks``, ``shift_checks``) stay section-specific tables in
``fcrm.md`` and ``shift.md``, not claims of this registry: they are orderings among a paper's
ablation rows read off that section's own table (FCRM's on means with a "within noise" rule against
per-video standard errors, SHIFT's on VBench groupings per video, one seed pooled), with verdict
wordings of their own. Folding them in would either change their numbers and verdicts (a refactor
must not) or repeat the headline claims twice with two different noise models in one table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from harness.store import Unfinished
from metrics.judges import MARK, metric_judges
from reports.budget import compute_summary, tuning_summary
from reports.objectives import objective_change, seed_interval
from reports.sections import ReportInputs, SectionOutput, section
from reports.tables import markdown_grid, unfinished_line
from trainers.claims import PaperClaim
from trainers.registry import get_trainer, ordered_trainers

HOLDS, FAILS, UNSURE, ABSENT = "holds", "does not hold", "inconclusive", "not measured"
LD = "probe/likelihood_displacement/"
GAMMA = "own_pairs/gamma"  # the paper's measurement: Eq. 10 on each training step's own pairs
OWN = "own objective"  # the paper column of the rows "<method> improves its own training objective"


@dataclass
class RunData:
    records: pd.DataFrame  # per-video values: method, seed, step, metric, video_id, value
    logs: pd.DataFrame  # train logs: method, seed, step, key, value (session_id where the store has it)
    concurrent: frozenset[int] = frozenset()  # sessions that trained several units at once (RunInfo)

    def methods(self) -> set[str]:
        return set(self.records["method"]) if not self.records.empty else set()


@dataclass
class Finding:
    evidence: str
    verdict: str


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


def _difference(data: RunData, claim: PaperClaim) -> Finding:
    mean, half, k, n = paired_delta(data, claim.metric, claim.a, claim.b)
    ev = f"{claim.metric} {claim.a} − {claim.b}: {mean:+.4f} ± {half:.4f} ({k} seeds × {n} videos)"
    return Finding(ev, verdict(mean, half, claim.positive))


def _final_log(data: RunData, method: str, key: str) -> list[float]:
    logs = data.logs
    rows = logs[(logs["method"] == method) & (logs["key"] == key)] if not logs.empty else logs
    if rows.empty:
        return []
    return [float(p.sort_values("step")["value"].iloc[-1]) for _, p in rows.groupby("seed")]


def _displacement(data: RunData, claim: PaperClaim) -> Finding:
    method = claim.a
    vals = _final_log(data, method, LD + "chosen_displacement")
    mean, half = seed_interval(vals)
    if len(vals) == 1:
        return Finding(f"chosen Δlog p at the final step: {mean:+.2e} (one seed: no interval)", UNSURE)
    return Finding(f"chosen Δlog p at the final step, {method}: {mean:+.2e} ± {half:.1e} ({len(vals)} seeds)",
                   verdict(mean, half, claim.positive))


def _gamma_positive(data: RunData, claim: PaperClaim) -> Finding:
    logs = data.logs
    g = logs[(logs["method"] == claim.a) & (logs["key"] == GAMMA)]["value"] if not logs.empty else []
    n = len(g)
    if not n:
        return Finding("no own-pairs Gamma logged (own_pairs/gamma)", ABSENT)
    pos = int((np.asarray(g) > 0).sum())
    lo, hi = stats.binomtest(pos, n).proportion_ci(0.95, method="wilson")
    v = HOLDS if lo > 0.5 else FAILS if hi < 0.5 else UNSURE
    return Finding(f"own-pairs Gamma > 0 in {pos} of {n} measured training steps ({pos / n:.0%}; "
                   f"95 % Wilson [{lo:.2f}, {hi:.2f}])", v)


SHARED_MACHINE_SPREAD = 1.5  # largest slowest/fastest seed ratio of per-step times of one method


def _time_ratio(data: RunData, claim: PaperClaim, tolerance: float = 0.2) -> Finding:
    """Seconds per training step, ``a`` over ``b`` (shift over sft), each the minimum over seeds.

    Wall time only grows when something else shares the machine (another job, a paused and resumed
    run), so the fastest seed is the best estimate of a method's cost, as in ``timeit``; a mean over
    seeds would carry whatever else ran beside the run into the verdict.
    """
    def per_step(method: str) -> dict[int, float]:
        logs = data.logs
        rows = logs[(logs["method"] == method) & (logs["key"] == "seconds")] if not logs.empty else logs
        return {int(s): float(p.sort_values("step")["value"].iloc[-1] / p["step"].max())
                for s, p in rows.groupby("seed")} if len(rows) else {}
    a, b = claim.a, claim.b
    fast, slow = per_step(a), per_step(b)
    if not fast or not slow:
        return Finding("no training times logged", ABSENT)
    if data.concurrent and "session_id" in data.logs:
        timed = data.logs[(data.logs["key"] == "seconds") & data.logs["method"].isin([a, b])]
        if timed["session_id"].isin(data.concurrent).any():
            return Finding(f"{a} or {b} was trained beside another method-seed unit (harness run --jobs > 1), so its "
                           "training seconds include the other's work and are no cost; train both with --jobs 1 on "
                           "a quiet machine (or benchmarks/bench_trainers.py)", UNSURE)
    ratio = min(fast.values()) / min(slow.values())
    limit = claim.ratio * (1 + tolerance)
    spread = (f"; per seed {a} {min(fast.values()):.2f}-{max(fast.values()):.2f} s, "
              f"{b} {min(slow.values()):.2f}-{max(slow.values()):.2f} s" if len(fast) + len(slow) > 2 else "")
    ev = (f"seconds per step {a} / {b}: {ratio:.2f} (fastest of {len(fast)} and {len(slow)} seeds{spread}; "
          f"the claim holds up to {limit:.2f}, the paper's {claim.ratio}× + {tolerance:.0%})")
    # The same method at the same settings costs the same per step on every seed; seeds that disagree
    # by more than SHARED_MACHINE_SPREAD were timed on a machine that something else was using, and
    # even the fastest seed then says little about the ratio.
    worst = max(max(t.values()) / min(t.values()) for t in (fast, slow))
    if worst > SHARED_MACHINE_SPREAD:
        return Finding(f"{ev}; seeds of one method differ up to {worst:.1f}× in time per step, so the machine "
                       "was shared while they ran: time the two on a quiet machine (benchmarks/bench_trainers.py)",
                       UNSURE)
    return Finding(ev, HOLDS if ratio <= limit else FAILS)


def _objective(data: RunData, claim: PaperClaim) -> Finding:
    """The method's own training objective moved its good way, the 95 % interval over seeds excluding
    zero (reports/objectives.py); one seed has no interval and is inconclusive."""
    objective = get_trainer(claim.a).training_objective
    change = objective_change(data.logs, claim.a, objective)
    if change is None:
        return Finding(f"no {objective.key} logged", ABSENT)
    interval = f"± {change.half:.2g}, {change.seeds} seeds" if np.isfinite(change.half) else "one seed: no interval"
    ev = (f"{objective.key} ({objective.direction} is better), first → last tenth of training: "
          f"{change.first:.4g} → {change.last:.4g}, change {change.change:+.4g} ({interval})")
    return Finding(ev, verdict(change.change, change.half, objective.higher) if np.isfinite(change.half) else UNSURE)


KINDS: dict[str, Callable[[RunData, PaperClaim], Finding]] = {
    "difference": _difference, "displacement": _displacement, "gamma_positive": _gamma_positive,
    "time_ratio": _time_ratio, "objective": _objective}


def registered_claims() -> list[PaperClaim]:
    """Every trainer's paper claims (``Trainer.claims``), in ``trainers.registry.ordered_trainers``
    order, then one claim per trainer that declares a training objective: it improves it."""
    trainers = ordered_trainers()
    own = [PaperClaim(OWN, f"{cls.name} improves its own training objective", "objective", (cls.name,), a=cls.name)
           for cls in trainers if cls.training_objective is not None]
    return [claim for cls in trainers for claim in cls.claims] + own


def claim_overlap(claim: PaperClaim, signals: Mapping[str, Iterable[str]] | None) -> str:
    """Which of the claim's methods trained on the judge of the metric it is decided on ('' none)."""
    if not claim.metric or not signals:
        return ""
    judges = metric_judges(claim.metric)
    hits = [f"{m} trained on {', '.join(sorted(judges & set(signals.get(m, []))))}"
            for m in claim.methods if judges & set(signals.get(m, []))]
    return "; ".join(hits)


def check_claims(data: RunData, claims: list[PaperClaim] | None = None,
                 signals: Mapping[str, Iterable[str]] | None = None,
                 unfinished: Iterable[Unfinished] = ()) -> pd.DataFrame:
    """One row per claim; ``signals`` (each method's training judges) fills the ``overlap`` column: the
    claim is decided on a metric whose judge one of its methods trained on. ``data`` holds finished seeds
    only (reports/render.py); ``unfinished`` names the seeds left out, so a claim whose method has no
    finished seed says so instead of "not in the run"."""
    rows = []
    have = data.methods()
    reached = {u.method: f"step {u.reached} of {u.scheduled}" for u in unfinished}
    for claim in claims or registered_claims():
        missing = [m for m in (*claim.methods, "base") if m not in have]
        if missing:
            why = [f"{m} unfinished (evaluated to {reached[m]})" for m in missing if m in reached]
            absent = [m for m in missing if m not in reached]
            text = "; ".join(why + ([f"needs method(s) {', '.join(absent)} in the run"] if absent else []))
            finding = Finding(text, ABSENT)
        else:
            finding = KINDS[claim.kind](data, claim)
        rows.append({"paper": claim.paper, "claim": claim.text, "evidence": finding.evidence,
                     "verdict": finding.verdict, "overlap": claim_overlap(claim, signals)})
    return pd.DataFrame(rows, columns=["paper", "claim", "evidence", "verdict", "overlap"])


def claims_markdown(table: pd.DataFrame, preset: str, tuning: str = "",
                    unfinished: Iterable[Unfinished] = ()) -> str:
    """The claims table; ``tuning``: paragraphs on the run's tuning and compute budgets (reports/budget.py),
    put first; ``unfinished``: the seeds left out, named under the table."""
    if table.empty or (table["verdict"] == ABSENT).all():
        return ""
    counts = table["verdict"].value_counts()
    head = (f"Headline claims of the four papers, checked on this run ({preset} preset). Differences are paired "
            "per eval video at each method's final checkpoint, averaged over seeds, with 95 % intervals that "
            "combine video and seed noise (reports/claims.py). "
            + ", ".join(f"{counts.get(v, 0)} {v}" for v in (HOLDS, FAILS, UNSURE, ABSENT)) + ".\n\n")
    if tuning:
        head = f"{tuning}\n\n{head}"
    marked = "overlap" in table and table["overlap"].astype(bool).any()
    cells = [[r.paper, r.claim, r.evidence + (f" {MARK}" if getattr(r, "overlap", "") else ""), f"**{r.verdict}**"]
             for r in table.itertuples()]
    foot = ""
    if marked:
        foot = (f"\n{MARK} decided on a metric whose judge a compared method trained on, so it reads that method's "
                "own training signal, not a held-out judge: "
                + "; ".join(f"{r.claim}: {r.overlap}" for r in table.itertuples() if r.overlap) + ".\n")
    if note := unfinished_line(unfinished):
        foot += f"\n{note}\n"
    return head + markdown_grid(["paper", "claim", "evidence", "verdict"], cells) + foot


@section("claims", "Paper claims")
def claims_section(run: ReportInputs) -> SectionOutput | None:
    table = check_claims(RunData(run.records, run.logs, run.info.concurrent_sessions),
                         signals=run.info.training_signals, unfinished=run.unfinished)
    _, tuning = tuning_summary((run.info.preset.get("tuning") or {}).get("results"), run.info.method_configs)
    budget = "\n\n".join(t for t in (tuning, compute_summary(run.logs)) if t)
    text = claims_markdown(table, run.info.preset_name, budget, run.unfinished)
    return SectionOutput(text) if text else None
