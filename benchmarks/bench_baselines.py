"""The reward-RL baselines' cost on the tiny model: seconds per step against `sft`.

    python benchmarks/bench_baselines.py [--repeats 5] [--rounds 2] [--out FILE] [--note TEXT]

* ``sft``: median seconds per step (the reference).
* ``flow-grpo``, ``flow-grpo-fast``, ``diffusionnft``, ``awm`` at the preset's settings: mean seconds
  per step over whole rollout rounds (a round is paid once every ``inner_steps`` steps, so a median
  would hide it), after a warm-up round.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_common import median_seconds, write_record
from bench_fcrm import build, per_step_over_rounds

from harness.config import load_preset

METHODS = ("flow-grpo", "flow-grpo-fast", "diffusionnft", "awm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "baselines.json")
    ap.add_argument("--note", default="", help="recorded with the figures (e.g. that the machine was shared)")
    args = ap.parse_args()
    preset = load_preset(args.preset)
    if preset.threads:
        torch.set_num_threads(preset.threads)
    results: dict = {"repeats": args.repeats, "rounds": args.rounds}
    sft = build(preset, "sft")
    it = iter(range(10**6))
    results["sft_step_s"] = median_seconds(lambda: sft.train_step(next(it)), args.repeats)
    print("sft", results["sft_step_s"])
    for method in METHODS:
        trainer = build(preset, method)
        row = {"step_s": per_step_over_rounds(trainer, args.rounds),
               "rollouts_per_round": trainer.config.conditions * trainer.config.group_size,
               "inner_steps": trainer.config.inner_steps}
        row["vs_sft"] = row["step_s"] / results["sft_step_s"]
        results[method] = row
        print(method, json.dumps(row))
    write_record(args.out, "baseline trainers' step speed", args.preset, results, note=args.note)


if __name__ == "__main__":
    main()
