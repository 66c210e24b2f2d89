"""Leaderboards and `harness regress`: a run compared with committed reference results, metric by metric.

A leaderboard (``leaderboards/*.json``, schema in ``leaderboards/README.md``) holds one entry per
(method, step, metric) of a reference run: the value of every seed, each seed's 95 % bootstrap
interval over videos, and the metric's direction, next to the run's manifest (options, preset,
method settings, provenance).

Noise. For one entry, the run's mean over its k_n seeds differs from the reference mean over k_r
seeds by noise with standard error

    se = max( s_r * sqrt(1/k_r + 1/k_n),  sqrt(b_r^2 / k_r + b_n^2 / k_n) )

with s_r the spread (std, ddof 1) over the reference seeds (needs k_r >= 2) and b the mean per-seed
bootstrap standard error, (ci_high - ci_low) / (2 * 1.96). The first term is training noise, the second
the noise of a finite eval set. A change counts when |Δ| > z * se (z = 3 by default: a run makes hundreds
of comparisons, so a false alarm must be rare), or, for a metric with no noise estimate at all (a
single seed without an interval), when it exceeds floating-point error across machines (``FLOAT_TOL``).
Worse beyond the band is a regression (exit status 1), better an improvement; a metric with no direction
(e.g. a probe) that moves is reported as "changed" and does not fail. A value that turns undefined (NaN) is a
regression.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.rundir import RunDir
from harness.store import Unfinished, open_readonly, scheduled_steps, unfinished_seeds

SCHEMA = "harness-leaderboard"
SCHEMA_VERSION = 1
Z_DEFAULT = 3.0
# Relative to max(1, |reference|): how far the same code's float32 numbers move on another CPU (another
# instruction set sums in another order). The smoke run on an AMD EPYC host against tiny-smoke.json, recorded on
# another host, differed by up to 2.4e-5 (FVD, the roll-ups; 2026-12-07), so 1e-9 failed CI there; the narrowest
# noise band of an entry with an interval in that run is 3e-3, ten times this.
FLOAT_TOL = 3e-4
KEY = ["method", "step", "metric"]


class LeaderboardError(ValueError):
    """A leaderboard file is missing, unreadable or of another schema; the message says what to do.

    ``replaceable``: the file is a harness leaderboard, only of another version or with unusable entries,
    so ``--update`` may overwrite it; anything else (not JSON, not a leaderboard) it must not."""

    def __init__(self, message: str, replaceable: bool = False) -> None:
        super().__init__(message)
        self.replaceable = replaceable


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per compared entry, with 'verdict'
    missing: pd.DataFrame  # in the leaderboard, not in the run
    new: pd.DataFrame  # in the run, not in the leaderboard
    config_changes: list[str]

    @property
    def regressions(self) -> pd.DataFrame:
        return self.table[self.table["verdict"] == "regression"]

    @property
    def ok(self) -> bool:
        return self.regressions.empty


# -- reading a run ------------------------------------------------------------------------------
def run_entries(run_dir: Path) -> pd.DataFrame:
    """Per (method, step, metric): seeds, per-seed values and bootstrap standard errors of a run."""
    db = RunDir(run_dir).results
    if not db.exists():
        raise LeaderboardError(f"{run_dir} holds no run (no results.sqlite); run `harness run --out {run_dir}` first")
    with open_readonly(db) as store:  # a reader: never give a 0-byte or foreign file a schema
        agg = store.aggregates()
    if agg.empty:
        raise LeaderboardError(f"{run_dir} has no evaluated checkpoint yet")
    from metrics.identity import directions_for

    directions = directions_for(sorted(agg["metric"].unique()))
    rows = []
    for (method, step, metric), part in agg.groupby(KEY, sort=True):
        part = part.sort_values("seed")
        half = (part["ci_high"] - part["ci_low"]) / 2
        rows.append({
            "method": method, "step": int(step), "metric": metric,
            "direction": {True: "higher", False: "lower", None: None}[directions[metric]],
            "seeds": [int(s) for s in part["seed"]],
            "values": [_num(v) for v in part["value"]],
            "ci_low": [_num(v) for v in part["ci_low"]], "ci_high": [_num(v) for v in part["ci_high"]],
            "n": [int(v) for v in part["n"]],
            "boot_se": [_num(v / 1.96) for v in half],
        })
    return pd.DataFrame(rows)


def _num(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def run_manifest(run_dir: Path) -> dict:
    """The run's run.json ({} when there is none)."""
    path = RunDir(run_dir).manifest
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LeaderboardError(f"{path} is not valid JSON ({exc}); it is the run's manifest, written by "
                               "`harness run`: restore it, or move it away to compare without it") from exc
    if not isinstance(manifest, dict):
        raise LeaderboardError(f"{path} is not a run manifest (a JSON {_json_kind(manifest)}, not an object); "
                               "restore it, or move it away to compare without it")
    return manifest


# -- leaderboard files ---------------------------------------------------------------------------
def build_leaderboard(run_dir: Path, note: str = "") -> dict:
    entries = run_entries(run_dir)
    manifest = run_manifest(run_dir)
    records = []
    for r in entries.to_dict("records"):
        values = [v for v in r["values"] if v is not None]
        records.append({
            **{k: r[k] for k in ("method", "step", "metric", "direction", "seeds", "values", "ci_low", "ci_high",
                                 "n")},
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
        })
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": note,
        # seeds evaluated only before their scheduled last step (an interrupted run): their entries stand at the
        # steps they reached, and a later step's entry averages fewer seeds
        "unfinished": [vars(u) for u in run_unfinished(run_dir, manifest)],
        "run": {k: manifest.get(k) for k in ("run_id", "options", "preset", "methods", "metrics")},
        "provenance": {**{k: manifest.get(k) for k in ("git", "versions", "hardware")},
                       **({"sessions": sessions} if (sessions := run_sessions(run_dir)) else {})},
        "entries": records,
    }


def run_unfinished(run_dir: Path, manifest: dict | None = None) -> tuple[Unfinished, ...]:
    """The run's seeds evaluated only before their method's scheduled last step (run.json's ``steps``)."""
    manifest = run_manifest(run_dir) if manifest is None else manifest
    with open_readonly(RunDir(run_dir).results) as store:
        agg = store.aggregates()
    return unfinished_seeds(agg, scheduled_steps(manifest.get("methods")))


def unfinished_warning(unfinished: tuple[Unfinished, ...]) -> str | None:
    """One line naming the unfinished seeds of a run being recorded or compared."""
    if not unfinished:
        return None
    parts = "; ".join(map(str, unfinished))
    return (f"the run has unfinished seeds: {parts}; their later steps are missing (finish them with "
            "`harness run --resume`)")


def run_sessions(run_dir: Path) -> list[dict]:
    """Each invocation that wrote the run: when it started, its command and options, its commit and library
    versions (a run resumed or extended on other code names every commit its numbers came from)."""
    with open_readonly(RunDir(run_dir).results) as store:
        rows = store.sessions().to_dict("records")
    return [{"started": r["started"], "command": r["command"],
             **{k: (r["provenance"] or {}).get(k) for k in ("git", "versions")}} for r in rows]


def write_leaderboard(board: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    # One entry per line: a leaderboard update reads as a diff of the entries that changed.
    head = json.dumps({k: v for k, v in board.items() if k != "entries"}, indent=1)
    entries = ",\n".join("  " + json.dumps(e) for e in board["entries"])
    tmp.write_text(f'{head[:-2]},\n "entries": [\n{entries}\n ]\n}}\n')
    tmp.replace(path)
    return path


def read_leaderboard(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise LeaderboardError(f"no leaderboard at {path}; create it from a reference run with "
                               f"`harness regress RUN_DIR --leaderboard {path} --update`")
    # Not a leaderboard at all: --update must not overwrite it, so the fix says to delete it first.
    rebuild = "restore it with git, or delete it and rebuild it with --update"
    try:
        board = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LeaderboardError(f"{path} is not valid JSON ({exc}); {rebuild}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise LeaderboardError(f"{path} cannot be read ({exc}); {rebuild}") from exc
    if not isinstance(board, dict):
        raise LeaderboardError(f"{path} is not a leaderboard: it holds a JSON {_json_kind(board)}, not an object "
                               f"with 'schema' and 'entries'; {rebuild}")
    if board.get("schema") != SCHEMA:
        raise LeaderboardError(f"{path} is not a leaderboard (schema {board.get('schema')!r}, expected {SCHEMA!r}); "
                               f"{rebuild}")
    # A harness leaderboard that cannot be compared with: --update may replace it.
    if board.get("schema_version") != SCHEMA_VERSION:
        raise LeaderboardError(f"{path} has schema {SCHEMA!r} version {board.get('schema_version')!r}; this harness "
                               f"reads version {SCHEMA_VERSION}: rebuild it with --update", replaceable=True)
    entries = board.get("entries")
    if not isinstance(entries, list) or not entries:
        found = "empty" if isinstance(entries, list) else "missing" if entries is None else \
            f"a JSON {_json_kind(entries)}"
        raise LeaderboardError(f"{path} has no entries ('entries' is {found}); nothing to compare with: restore it "
                               f"with git or rebuild it from a reference run with --update", replaceable=True)
    for i, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem:
            raise LeaderboardError(f"{path}: entry {i} {problem}; restore it with git or rebuild it with --update",
                                   replaceable=True)
    return board


def _json_kind(value: Any) -> str:
    kinds = {list: "array", dict: "object", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _entry_problem(e: Any) -> str | None:
    """What makes one leaderboard entry unusable, or None."""
    if not isinstance(e, dict):
        return f"is a JSON {_json_kind(e)}, not an object"
    lists = ("values", "ci_low", "ci_high")
    missing = [k for k in (*KEY, *lists) if k not in e]
    if missing:
        return f"lacks {', '.join(repr(k) for k in missing)}"
    where = f"({e['method']}, {e['step']}, {e['metric']})"
    if not all(isinstance(e[k], list) for k in lists) or not e["values"] \
            or not len(e["values"]) == len(e["ci_low"]) == len(e["ci_high"]):
        return f"{where} needs 'values', 'ci_low' and 'ci_high' as lists of one number per seed"
    if not all(v is None or isinstance(v, int | float) and not isinstance(v, bool) for k in lists for v in e[k]):
        return f"{where} has a value that is not a number or null"
    if e.get("direction") not in (None, "higher", "lower"):
        return f"{where} has direction {e['direction']!r} (allowed: 'higher', 'lower', null)"
    return None


def _board_entries(board: dict) -> pd.DataFrame:
    rows = []
    for e in board["entries"]:
        half = [(hi - lo) / 2 if lo is not None and hi is not None else None
                for lo, hi in zip(e["ci_low"], e["ci_high"], strict=True)]
        rows.append({**e, "boot_se": [None if h is None else h / 1.96 for h in half]})
    return pd.DataFrame(rows, columns=[*KEY, "direction", "seeds", "values", "ci_low", "ci_high", "n", "boot_se"])


# -- comparing -----------------------------------------------------------------------------------
def _mean(values: list) -> float:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if len(finite) == len(values) and finite else float("nan")


def _boot(se: list) -> float | None:
    finite = [s for s in se if s is not None]
    return float(np.mean(finite)) if finite else None


def compare_entry(ref: dict, new: dict, z: float = Z_DEFAULT) -> dict:
    """The verdict for one (method, step, metric): see the module docstring for the noise model."""
    r, n = _mean(ref["values"]), _mean(new["values"])
    k_r, k_n = len(ref["values"]), len(new["values"])
    terms = []
    if k_r >= 2 and math.isfinite(r):
        terms.append(float(np.std(ref["values"], ddof=1)) * math.sqrt(1 / k_r + 1 / k_n))
    b_r, b_n = _boot(ref["boot_se"]), _boot(new["boot_se"])
    if b_r is not None or b_n is not None:
        b_r, b_n = b_r if b_r is not None else b_n, b_n if b_n is not None else b_r
        terms.append(math.sqrt(b_r ** 2 / k_r + b_n ** 2 / k_n))
    se = max(terms) if terms else 0.0
    tol = FLOAT_TOL * max(1.0, abs(r) if math.isfinite(r) else 1.0)
    band = max(z * se, tol)
    direction = ref.get("direction")
    delta = n - r
    if not math.isfinite(r) and not math.isfinite(n):
        verdict = "same"
    elif not math.isfinite(n):
        verdict = "regression"  # a defined number turned undefined
    elif not math.isfinite(r):
        verdict = "improvement" if direction else "changed"
    elif abs(delta) <= band:
        verdict = "same" if abs(delta) <= tol else "within noise"
    elif direction is None:
        verdict = "changed"
    else:
        better = delta > 0 if direction == "higher" else delta < 0
        verdict = "improvement" if better else "regression"
    return {"reference": r, "run": n, "delta": delta, "band": band, "z": (abs(delta) / se) if se else math.inf,
            "seeds_ref": k_r, "seeds_run": k_n, "direction": direction or "", "verdict": verdict}


def config_changes(board: dict, run_dir: Path) -> list[str]:
    """Settings of the run that differ from the reference run's (preset and shared method sections)."""
    manifest = run_manifest(run_dir)
    ref = board.get("run") or {}
    changes: list[str] = []
    _diff(ref.get("preset") or {}, manifest.get("preset") or {}, "preset", changes, skip={"methods"})
    ref_methods, run_methods = ref.get("methods") or {}, manifest.get("methods") or {}
    for method in sorted(set(ref_methods) & set(run_methods)):
        _diff(ref_methods[method], run_methods[method], f"methods.{method}", changes)
    return changes


def _diff(a: Any, b: Any, where: str, out: list[str], skip: set[str] = frozenset()) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in skip:
                _diff(a.get(k), b.get(k), f"{where}.{k}", out)
    elif a != b:
        out.append(f"{where}: {_short(a)} -> {_short(b)}")


def _short(value: Any, limit: int = 160) -> str:
    """A setting as the diff shows it: a long one (a recorded tuning sweep) cut, with its length."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def compare(board: dict, run_dir: Path, z: float = Z_DEFAULT) -> Comparison:
    ref = _board_entries(board).set_index(KEY)
    run = run_entries(run_dir).set_index(KEY)
    shared = ref.index.intersection(run.index)
    rows = [{"method": k[0], "step": k[1], "metric": k[2],
             **compare_entry(ref.loc[k].to_dict(), run.loc[k].to_dict(), z)} for k in shared]
    table = pd.DataFrame(rows, columns=[*KEY, "reference", "run", "delta", "band", "z", "seeds_ref", "seeds_run",
                                        "direction", "verdict"])
    missing = ref.loc[ref.index.difference(run.index)].reset_index()[KEY]
    new = run.loc[run.index.difference(ref.index)].reset_index()[KEY]
    return Comparison(table.sort_values(KEY).reset_index(drop=True), missing, new, config_changes(board, run_dir))


# -- printing ------------------------------------------------------------------------------------
def format_comparison(cmp: Comparison, show_all: bool = False, limit: int = 60) -> str:
    t = cmp.table
    counts = t["verdict"].value_counts()
    summary = (f"compared {len(t)} (method, step, metric) entries: "
               + ", ".join(f"{counts.get(v, 0)} {v}" for v in ("same", "within noise", "improvement", "changed",
                                                                  "regression"))
               + f"; {len(cmp.missing)} only in the leaderboard, {len(cmp.new)} only in the run")
    lines = []
    if cmp.config_changes:
        lines.append("settings that differ from the reference run:")
        lines += [f"  {c}" for c in cmp.config_changes[:20]]
        if len(cmp.config_changes) > 20:
            lines.append(f"  ... and {len(cmp.config_changes) - 20} more")
    shown = t if show_all else t[t["verdict"].isin(["regression", "improvement", "changed"])]
    order = {"regression": 0, "changed": 1, "improvement": 2, "within noise": 3, "same": 4}
    shown = shown.assign(_o=shown["verdict"].map(order)).sort_values(["_o", *KEY]).drop(columns="_o")
    if not shown.empty:
        view = pd.DataFrame({
            "method": shown["method"], "step": shown["step"], "metric": shown["metric"],
            "dir": shown["direction"].map({"higher": "↑", "lower": "↓"}).fillna(""),
            "reference": shown["reference"].map(_fmt), "run": shown["run"].map(_fmt),
            "Δ": shown["delta"].map(lambda v: _fmt(v, signed=True)),
            "noise band": shown["band"].map(lambda v: "±" + _fmt(v)),
            "seeds": shown["seeds_ref"].astype(str) + "/" + shown["seeds_run"].astype(str),
            "verdict": shown["verdict"].str.upper().where(shown["verdict"] == "regression", shown["verdict"]),
        })
        text = view.head(limit).to_string(index=False)
        lines.append(text)
        if len(view) > limit:
            lines.append(f"... {len(view) - limit} more rows (all of them: --all --json FILE)")
    if len(cmp.missing):
        methods = sorted(set(cmp.missing["method"]))
        lines.append(f"not in the run: {len(cmp.missing)} entries (methods {', '.join(methods)})")
    lines.append(summary)
    lines.append("no regression" if cmp.ok else f"REGRESSION: {len(cmp.regressions)} entries worse than the "
                 "leaderboard beyond noise")
    return "\n".join(lines)


def _fmt(v: float, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "nan"
    mag = abs(v)
    text = f"{v:+.4g}" if signed else f"{v:.4g}"
    return text if mag >= 1e-3 or mag == 0 else (f"{v:+.2e}" if signed else f"{v:.2e}")
