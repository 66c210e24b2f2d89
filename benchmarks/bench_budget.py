"""Wall time of the mission command, `harness run --methods shift,fcrm,pgdpo,apo`, on the default preset.

    python benchmarks/bench_budget.py [--preset tiny] [--out-run runs/budget] [--out benchmarks/results/budget.json]

Runs the command as a user would (a fresh run directory, the CLI, the report at the end) and records
the wall time, then splits it from the results store: each method's time in training steps (logged
as ``seconds``) and the rest (rollouts for probes, checkpoints, evaluation), from the checkpoint
timestamps. Goal (issue 10): at most 10 minutes on 2 cores. Close other CPU work first.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from bench_common import write_record

from harness.store import ResultStore

METHODS = "shift,fcrm,pgdpo,apo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", help="e.g. tiny-long, the 300-step schedule (about 25 min)")
    ap.add_argument("--out-run", type=Path, default=Path("runs/budget"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "budget.json")
    args = ap.parse_args()
    shutil.rmtree(args.out_run, ignore_errors=True)
    harness = Path(sys.executable).with_name("harness")
    cmd = [str(harness), "run", "--methods", METHODS, "--preset", args.preset, "--out", str(args.out_run),
           "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    with ResultStore(args.out_run / "results.sqlite") as store:
        ckpts, logs = store.checkpoints(), store.train_logs()
    ckpts["created"] = pd.to_datetime(ckpts["created"])
    secs = logs[logs["key"] == "seconds"].groupby("method")["value"].max()
    ends = ckpts.groupby("method")["created"].max()
    order = ["base", *METHODS.split(",")]
    spans = {}
    for prev, m in zip(order, order[1:], strict=False):
        spans[m] = (ends[m] - ends[prev]).total_seconds()
    per_method = {m: {"wall_s": round(spans[m], 1), "training_steps_s": round(float(secs.get(m, 0.0)), 1),
                      "other_s (probes, checkpoints, evaluation)": round(spans[m] - float(secs.get(m, 0.0)), 1)}
                  for m in spans}
    results = {"command": " ".join(["harness", *cmd[1:]]), "wall_s": round(wall, 1),
               "wall_min": round(wall / 60, 2), "goal_min": 10, "meets_goal": wall <= 600,
               "per_method": per_method}
    write_record(args.out, "budget", args.preset, results)


if __name__ == "__main__":
    main()
