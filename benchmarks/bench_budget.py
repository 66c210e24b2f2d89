"""Wall time of the mission command, `harness run --methods shift,fcrm,pgdpo,apo`, on the default preset.

    python benchmarks/bench_budget.py [--preset tiny] [--out-run runs/budget] [--out benchmarks/results/budget.json]

Runs the command as a user would (a fresh run directory, the CLI, the report at the end) and records
the wall time, split into phases by the time each of the run's progress lines arrives (the base
model's evaluation, then per method: preparing the trainer, which builds or loads the preference
pairs; training, which includes the training probes and checkpoint saves; evaluating its checkpoints;
and the report), and the host's speed just before and after it (seconds per sampled video: the same
machine has sampled a video in 0.111 to 0.19 s on different days). Each method's time in training steps alone is the
``seconds`` it logs. With ``--jobs`` > 1 (the tiny preset's default: two methods at once) the methods'
phases overlap, and their seconds include the other worker's work. Goal (issue 10): at most 10 minutes
on 2 cores. Close other CPU work first.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_common import host_seconds_per_video, write_record

from harness.config import load_preset
from harness.store import ResultStore

METHODS = "shift,fcrm,pgdpo,apo"
# Progress lines of harness/runner.py and harness/cli/run.py, and the phase each one starts.
PHASES = [
    (re.compile(r"evaluating the base model"), lambda m: ("base", "evaluation")),
    (re.compile(r"method-seed units in \d+ worker processes"), lambda m: ("workers", "start")),
    (re.compile(r"(\S+) seed \d+: preparing the trainer"), lambda m: (m[1], "prepare")),
    (re.compile(r"(\S+) seed \d+: training steps"), lambda m: (m[1], "training")),
    (re.compile(r"(\S+) seed \d+: evaluating step"), lambda m: (m[1], "evaluation")),
    (re.compile(r"(\S+) seed \d+: done"), lambda m: (m[1], None)),
    (re.compile(r"rendering the report"), lambda m: ("report", "render")),
]


def timed_lines(cmd: list[str]) -> tuple[float, list[tuple[float, str]]]:
    """Run ``cmd``, echoing its output; the wall time and each output line with its arrival time."""
    t0 = time.perf_counter()
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip()))
            print(line, end="", flush=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return time.perf_counter() - t0, lines


def phase_seconds(wall: float, lines: list[tuple[float, str]]) -> dict[str, dict[str, float]]:
    """Seconds per (owner, phase). A method's phase lasts until its own next line (its ``done`` line ends the
    last one), so methods trained at once in worker processes (``--jobs``) each get their own phases, which
    then overlap in time; any other phase lasts until the next line of any owner."""
    marks = [(0.0, ("startup", "imports and preset"))]
    for t, text in lines:
        for pattern, phase in PHASES:
            if m := pattern.search(text):
                marks.append((t, phase(m)))
                break
    out: dict[str, dict[str, float]] = {}
    for i, (t, (owner, phase)) in enumerate(marks):
        if phase is None:  # a "done" line: it ends a phase and starts none
            continue
        own = next((tn for tn, (o, _) in marks[i + 1:] if o == owner), None)
        shared = owner in ("startup", "base", "workers", "report")
        t_next = (marks[i + 1][0] if i + 1 < len(marks) else wall) if shared or own is None else own
        slot = out.setdefault(owner, {})
        slot[phase] = round(slot.get(phase, 0.0) + t_next - t, 1)
    for owner, slot in out.items():
        spans = [t for t, (o, _) in marks if o == owner]
        if owner not in ("startup", "base", "workers", "report") and spans:
            slot["span from its first to its last line"] = round(spans[-1] - spans[0], 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", help="e.g. tiny-long, the 300-step schedule (about 25 min)")
    ap.add_argument("--out-run", type=Path, default=Path("runs/budget"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "budget.json")
    ap.add_argument("--jobs", type=int, default=None, help="harness run --jobs (default: the preset's)")
    args = ap.parse_args()
    shutil.rmtree(args.out_run, ignore_errors=True)
    speed_before = host_seconds_per_video(args.preset)
    harness = Path(sys.executable).with_name("harness")
    cmd = [str(harness), "run", "--methods", METHODS, "--preset", args.preset, "--out", str(args.out_run),
           "--no-progress", *(["--jobs", str(args.jobs)] if args.jobs else [])]
    wall, lines = timed_lines(cmd)
    speed_after = host_seconds_per_video(args.preset)
    phases = phase_seconds(wall, lines)
    with ResultStore(args.out_run / "results.sqlite") as store:
        logs = store.train_logs()
    steps = logs[logs["key"] == "seconds"].groupby("method")["value"].max()
    for method, slot in phases.items():
        if method in steps:
            slot["of which training steps"] = round(float(steps[method]), 1)
    results = {"command": " ".join(["harness", *cmd[1:]]), "wall_s": round(wall, 1),
               "wall_min": round(wall / 60, 2), "goal_min": 10, "meets_goal": wall <= 600,
               "jobs": args.jobs or load_preset(args.preset).jobs, "phases_s": phases,
               # the host's speed just before and after the run (bench_common.host_seconds_per_video)
               "host_s_per_video": {"before": round(speed_before, 4), "after": round(speed_after, 4)}}
    write_record(args.out, "budget", args.preset, results)


if __name__ == "__main__":
    main()
