"""`harness reproduce RUN_DIR`: re-run a run from its manifest (run.json) and diff the stored numbers.

The manifest holds everything a run depends on besides the code: the resolved preset (world, model,
sampler, eval set, every method section), the run options (methods, seeds, steps, metrics) and the
provenance (commit, library versions, hardware). A re-run with the same code on the same hardware
must store identical numbers: every aggregate, every per-video record and every logged training
value except wall-clock seconds. Anything else is a reproducibility bug, and the diff says where.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.config import PresetConfig
from harness.rundir import RunDir
from harness.runner import RunError, RunOptions, run
from harness.store import StoreError, open_readonly

TIMING_KEYS = ("seconds",)  # wall-clock measurements: never expected to repeat


@dataclass
class RunDiff:
    aggregates: pd.DataFrame  # rows whose value differs
    records: pd.DataFrame
    train_logs: pd.DataFrame
    only_in_one: list[str]  # (method, seed, step, metric) present in one run only
    provenance: list[str]  # commit / versions / hardware that differ
    compared: dict[str, int]

    @property
    def identical(self) -> bool:
        return self.aggregates.empty and self.records.empty and self.train_logs.empty and not self.only_in_one


def load_manifest(run_dir: Path) -> dict:
    path = RunDir(run_dir).manifest
    if not path.exists():
        raise RunError(f"{run_dir} has no run.json (the run manifest); only directories written by `harness run` "
                       "can be reproduced")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON ({exc})") from exc


def reproduce(run_dir: Path, out: Path, show_progress: bool = False, atol: float = 0.0) -> RunDiff:
    manifest = load_manifest(run_dir)
    try:  # the numbers to compare with must be readable before the (long) re-run, not after it
        with open_readonly(RunDir(run_dir).results):
            pass
    except StoreError as exc:
        raise RunError(f"nothing to reproduce against: {exc}") from exc
    if RunDir(out).results.exists():
        raise RunError(f"{out} already holds a run; choose an empty --out for the re-run")
    try:
        preset = PresetConfig.model_validate(manifest["preset"])
        opts = RunOptions(**{**manifest["options"], "resume": False, "show_progress": show_progress})
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{run_dir}/run.json cannot be read back as a preset and run options ({exc}); it was "
                       "written by an incompatible version of the harness") from exc
    run(preset, Path(out), opts)
    return diff_runs(Path(run_dir), Path(out), manifest, load_manifest(out), atol)


def _tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    with open_readonly(RunDir(run_dir).results) as store:  # a reader: never writes either run
        agg, rec, logs = store.aggregates(), store.records(), store.train_logs()
    logs = logs[~logs["key"].isin(TIMING_KEYS)] if not logs.empty else logs
    return agg, rec, logs


def _session_commits(run_dir: Path) -> list[str]:
    """The distinct commits of the sessions that wrote a run, in order."""
    with open_readonly(RunDir(run_dir).results) as store:
        return store.session_commits()


def _differ(a: pd.DataFrame, b: pd.DataFrame, key: list[str], atol: float) -> tuple[pd.DataFrame, list[str], int]:
    if a.empty and b.empty:
        return pd.DataFrame(), [], 0
    m = a[[*key, "value"]].merge(b[[*key, "value"]], on=key, how="outer", suffixes=("_original", "_rerun"),
                                 indicator=True)
    one = m[m["_merge"] != "both"]
    both = m[m["_merge"] == "both"]
    x, y = both["value_original"].astype(float), both["value_rerun"].astype(float)
    same = ((x - y).abs() <= atol) | (x.isna() & y.isna())
    diff = both[~same].drop(columns="_merge").assign(delta=(y - x)[~same])
    only = [f"{'/'.join(str(v) for v in r[key])} only in the {'original' if r['_merge'] == 'left_only' else 're-run'}"
            for _, r in one.iterrows()]
    return diff.reset_index(drop=True), only, len(both)


def diff_runs(original: Path, rerun: Path, manifest_a: dict | None = None, manifest_b: dict | None = None,
              atol: float = 0.0) -> RunDiff:
    """Every stored number of two runs compared (``atol`` 0: bit-identical)."""
    (agg_a, rec_a, log_a), (agg_b, rec_b, log_b) = _tables(original), _tables(rerun)
    agg, only_agg, n_agg = _differ(agg_a, agg_b, ["method", "seed", "step", "metric"], atol)
    rec, only_rec, n_rec = _differ(rec_a, rec_b, ["method", "seed", "step", "metric", "video_id"], atol)
    logs, only_log, n_log = _differ(log_a, log_b, ["method", "seed", "step", "key"], atol)
    manifest_a = manifest_a or load_manifest(original)
    manifest_b = manifest_b or load_manifest(rerun)
    prov = []
    for section in ("git", "versions", "hardware"):
        a, b = manifest_a.get(section) or {}, manifest_b.get(section) or {}
        prov += [f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}"
                 for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    for name, run_dir in (("original", original), ("rerun", rerun)):
        commits = _session_commits(run_dir)
        if len(commits) > 1:  # resumed or extended on other code: its numbers came from several commits
            prov.append(f"{name}: written by sessions on {len(commits)} commits ({', '.join(commits)})")
    return RunDiff(agg, rec, logs, only_agg + only_rec + only_log, prov,
                   {"aggregates": n_agg, "records": n_rec, "train_logs": n_log})


def format_diff(diff: RunDiff, limit: int = 30) -> str:
    lines = [f"compared {diff.compared['aggregates']} aggregates, {diff.compared['records']} per-video records, "
             f"{diff.compared['train_logs']} logged training values (wall-clock seconds excluded)"]
    if diff.provenance:
        lines.append("provenance that differs (a cause of differences below, if any):")
        lines += [f"  {p}" for p in diff.provenance]
    for name, frame in (("aggregates", diff.aggregates), ("records", diff.records), ("training logs", diff.train_logs)):
        if not frame.empty:
            worst = frame["delta"].abs().max()
            lines.append(f"{len(frame)} {name} differ (largest |Δ| {worst:.3g}):")
            lines.append(frame.head(limit).to_string(index=False))
    if diff.only_in_one:
        lines.append(f"{len(diff.only_in_one)} entries present in one run only:")
        lines += [f"  {s}" for s in diff.only_in_one[:limit]]
    lines.append("identical: every stored number matches" if diff.identical else "NOT REPRODUCED")
    return "\n".join(lines)
